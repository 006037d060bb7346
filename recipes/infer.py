"""Recipes ``mosaic-alm ask`` and ``mosaic-alm caption``: load an ALM artifact, answer about / caption audio files.

    mosaic-alm ask --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...] --question "Which word is spoken?"
    mosaic-alm caption --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...]
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from mosaic_alm.artifact import load_alm
from mosaic_alm.infer import CAPTION_PROMPT, ask, caption


def _common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--artifact", required=True, help="a stage artifact folder (mosaic-alm train-alm writes one)")
    ap.add_argument("--audio", nargs="+", required=True, help="audio file(s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print JSON lines {audio, question, answer}")


def _print(audios, questions, answers, as_json):
    for a, q, ans in zip(audios, questions, answers):
        if as_json:
            print(json.dumps({"audio": str(a), "question": q, "answer": ans}, ensure_ascii=False))
        elif len(audios) == 1:
            print(ans)
        else:
            print(f"{a}\t{ans}")


def main_ask(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm ask", description="answer a question about audio file(s)")
    _common_args(ap)
    ap.add_argument("--question", "-q", required=True)
    args = ap.parse_args(argv)
    model = load_alm(args.artifact, args.device)
    answers = ask(model, list(args.audio), args.question, args.batch_size, args.max_new_tokens or 32)
    answers = answers if isinstance(answers, list) else [answers]
    _print(args.audio, [args.question] * len(args.audio), answers, args.json)
    return 0


def main_caption(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm caption", description="caption audio file(s)")
    _common_args(ap)
    ap.add_argument("--prompt", default=CAPTION_PROMPT)
    args = ap.parse_args(argv)
    model = load_alm(args.artifact, args.device)
    caps = caption(model, list(args.audio), args.prompt, args.batch_size, args.max_new_tokens or 48)
    caps = caps if isinstance(caps, list) else [caps]
    _print(args.audio, [args.prompt] * len(args.audio), caps, args.json)
    return 0
