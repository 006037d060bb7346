"""Build the embedded offline benchmark (``mosaic-alm build-data``): three labelled tasks from Debian packages.

Prints a table of class counts per split for each task built or found in the cache. See
:mod:`encoder.data.embedded` for the layout and :func:`encoder.data.embedded.build` for the Python entry point.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

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
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        info = build(args.root, profile=args.profile, seed=args.seed, tasks=args.tasks, force=args.force,
                     jobs=args.jobs)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_counts({**info, "tasks": {t: info["tasks"][t] for t in args.tasks}}))
    print(f"\ntotal: {time.time() - t0:.1f} s (build seconds recorded: {info['seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
