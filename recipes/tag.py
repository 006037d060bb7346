"""Recipe ``mosaic-alm tag``: top labels of audio files from a classifier (an imported released AudioMosaic
classifier or probe, or its released folder directly).

    mosaic-alm tag clip.wav other.flac sounds/ --model runs/paper/as2m [--top-k 5] [--hop-seconds 5] [--jsonl]

Clips longer than the model's window are scored in windows and pooled (max for AudioSet's multi-label heads, mean
for single-label ones; :mod:`encoder.tagging`). A file that cannot be read gets one line on stderr and the others
are still tagged; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from encoder.features import AudioError
from encoder.tagging import expand_audio_paths, tag_file
from mosaic_core.config import ConfigError


def load_classifier(spec: str):
    from pathlib import Path

    from encoder.hf import AudioMosaicConfig, AudioMosaicForAudioClassification
    from encoder.release import is_release

    if not is_release(spec):
        if not (Path(spec) / "config.json").is_file():
            raise ConfigError(f"--model {spec}: not a classifier folder (mosaic-alm import writes one) nor a released "
                              "AudioMosaic checkpoint")
        if AudioMosaicConfig.from_pretrained(spec).head_config() is None:
            raise ConfigError(f"--model {spec}: an encoder without a classification head; tag needs a classifier "
                              "or probe (e.g. mosaic-alm import hanxunh/AudioMosaic-vit-b16-finetune-as2m OUT)")
    model = AudioMosaicForAudioClassification.from_pretrained(spec)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm tag", description="top labels of audio files from a classifier")
    ap.add_argument("audio", nargs="+", help="audio files or folders (their audio files, recursively)")
    ap.add_argument("--model", required=True, help="an imported classifier / probe folder, or a released one")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--hop-seconds", type=float, default=None,
                    help="window hop for clips longer than the model's input (default: the window length)")
    ap.add_argument("--jsonl", action="store_true", help="one JSON object per file")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    files = expand_audio_paths(args.audio)
    if not files:
        raise AudioError(args.audio[0], "holds no audio files")
    model = load_classifier(args.model)
    hop = None if args.hop_seconds is None else int(round(args.hop_seconds * 100))
    if hop is not None and hop < 1:
        raise ConfigError(f"--hop-seconds must be at least 0.01, got {args.hop_seconds}")
    failed = 0
    for f in files:
        try:
            res = tag_file(model, f, args.top_k, hop)
        except AudioError as exc:
            print(f"mosaic-alm tag: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.jsonl:
            print(json.dumps(res, ensure_ascii=False), flush=True)
        else:
            labels = ", ".join(f"{x['label']} {x['score']:.3f}" for x in res["labels"])
            print(f"{f}\t{labels}", flush=True)
    return 1 if failed else 0
