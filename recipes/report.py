"""Recipe: one self-contained HTML report of a pipeline run folder, one command:

    mosaic-alm report RUN_DIR [--data DATA_ROOT] [--clips 8] [--no-model]

Reads whatever the run folder holds (the layout of :mod:`mosaic_core.run_layout`, written by ``mosaic-alm
pipeline``) and writes ``RUN_DIR/report.html`` with no external assets; a section whose inputs are missing says so
in one line. The page and what it shows are :mod:`eval.run_report`'s; this job only reads the command line.
"""
from __future__ import annotations

import argparse
import sys

from eval.run_report import build_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a pipeline run folder (mosaic-alm pipeline --out)")
    p.add_argument("--data", default=None, help="data root of the gallery's test clips (default: the run's)")
    p.add_argument("--clips", type=int, default=8, help="clips in the gallery")
    p.add_argument("--no-model", action="store_true", help="do not run the ALM artifact for the gallery")
    p.add_argument("--max-new-tokens", type=int, default=16, help="answer length (captions get 3x)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    page = build_report(args.run_dir, args.data, args.clips, not args.no_model, args.seed, args.max_new_tokens)
    print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
