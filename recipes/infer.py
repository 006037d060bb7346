"""Recipes ``mosaic-alm ask`` and ``mosaic-alm caption``: load an ALM artifact, answer about / caption audio files.

    mosaic-alm ask --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...] --question "Which word is spoken?"
    mosaic-alm caption --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from encoder.features import AudioError
from mosaic_alm.artifact import check_artifact, load_alm
from mosaic_alm.generation import CAPTION_PROMPT, ask


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


def _answer(argv, prog: str, description: str, option: tuple[str, ...], default: str | None,
            max_new_tokens: int) -> int:
    """Parse ``--artifact --audio ... <option>``, ask the option's text of every clip, print the answers."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    _common_args(ap)
    ap.add_argument(*option, required=default is None, default=default)
    args = ap.parse_args(argv)
    text = getattr(args, option[0].lstrip("-"))
    check_artifact(args.artifact)
    for a in args.audio:  # before the model loads: a typo costs no waiting
        if not Path(a).is_file():
            raise AudioError(a, "is a directory, not an audio file" if Path(a).is_dir() else "file does not exist")
    model = load_alm(args.artifact, args.device)
    answers = ask(model, list(args.audio), text, args.batch_size, args.max_new_tokens or max_new_tokens)
    answers = answers if isinstance(answers, list) else [answers]
    _print(args.audio, [text] * len(args.audio), answers, args.json)
    return 0


def main_ask(argv: Sequence[str] | None = None) -> int:
    return _answer(argv, "mosaic-alm ask", "answer a question about audio file(s)", ("--question", "-q"), None, 32)


def main_caption(argv: Sequence[str] | None = None) -> int:
    return _answer(argv, "mosaic-alm caption", "caption audio file(s)", ("--prompt",), CAPTION_PROMPT, 48)
