"""Recipe ``mosaic-alm make-instructions``: generate the ALM instruction data (closed and open-ended questions,
captions, mixtures) from the embedded benchmark's manifests (:func:`mosaic_alm.instructions.generate`)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mosaic_alm.instructions import generate


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm make-instructions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded-small", help="embedded data root (built beforehand)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mixtures", action="store_true")
    args = ap.parse_args(argv)
    try:
        summary = generate(args.root, seed=args.seed, mixtures=not args.no_mixtures)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, s in summary.items():
        print(f"{split}: {s['records']} records " + ", ".join(f"{k}={v}" for k, v in s["qtypes"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
