"""Build the embedded offline benchmark (``mosaic-alm build-data``): three labelled tasks from Debian packages, and
the unlabeled pretraining corpus (``{root}/unlabeled``, WebDataset shards).

Prints a table of class counts per split for each task built or found in the cache, then the corpus's size. See
:mod:`encoder.data.embedded` for the layout, :func:`encoder.data.embedded.build` for the Python entry point and
:mod:`encoder.data.corpus` for the corpus (``--corpus-clips``: its size; the profile's by default, 0 skips it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

from encoder.data.corpus import CORPUS_PROFILES, build_corpus, corpus_dir
from encoder.data.embedded import BUILDERS, PROFILES, TASKS, BuildError, build


def format_counts(info: dict[str, Any]) -> str:
    """A table of class counts per split for each task."""
    lines = []
    for task, t in info["tasks"].items():
        splits = list(t["counts"])
        classes = sorted({c for s in t["counts"].values() for c in s}, key=lambda c: BUILDERS[task][1].index(c))
        w = max(len(c) for c in classes + ["class"]) + 2
        lines.append(f"\n[{task}] {t['clips']} clips, {t['bytes'] / 1e6:.1f} MB, {t['seconds']} s")
        lines.append("class".ljust(w) + "".join(s.rjust(14) for s in splits))
        for c in classes:
            lines.append(c.ljust(w) + "".join(str(t["counts"][s].get(c, 0)).rjust(14) for s in splits))
        lines.append("total".ljust(w) + "".join(str(sum(t["counts"][s].values())).rjust(14) for s in splits))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm build-data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded-small", help="output folder")
    ap.add_argument("--profile", choices=PROFILES, default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--corpus-clips", type=int, default=None,
                    help="unlabeled clips to build: " + ", ".join(f"{p} profile {n}" for p, n in
                                                                   CORPUS_PROFILES.items()) + " by default; 0: none")
    args = ap.parse_args(argv)
    clips = CORPUS_PROFILES[args.profile] if args.corpus_clips is None else args.corpus_clips
    if clips < 0:
        ap.error(f"--corpus-clips must be >= 0, got {clips}")
    t0 = time.time()
    try:
        info = build(args.root, profile=args.profile, seed=args.seed, tasks=args.tasks, force=args.force,
                     jobs=args.jobs)
        corpus = build_corpus(args.root, clips, seed=args.seed, jobs=args.jobs, force=args.force) if clips else None
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_counts({**info, "tasks": {t: info["tasks"][t] for t in args.tasks}}))
    if corpus:
        print(f"\n[unlabeled] {corpus['clips']} clips ({', '.join(f'{k} {n}' for k, n in corpus['kinds'].items())}), "
              f"{corpus['hours']} h, {corpus['bytes'] / 1e6:.0f} MB in {corpus['shards']} shards, "
              f"{corpus['seconds']['total']} s -> {corpus_dir(args.root)}")
    print(f"\ntotal: {time.time() - t0:.1f} s (build seconds recorded: {info['seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
