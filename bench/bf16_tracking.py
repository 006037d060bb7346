"""Does bf16 autocast pretraining track fp32 on this CPU? Two tiny-recipe runs, same seed, data, masks and schedule.

    python bench/bf16_tracking.py [--data data/embedded-full] [--steps 60] [--out results/bf16_tracking.json]

Runs ``mosaic-alm pretrain`` with ``train.precision=fp32`` and ``=bf16`` (one thread each, side by side; a run
folder that already holds a finished ``history.json`` is reused) and compares the per-step NT-Xent losses. The
tolerance is stated on 10-step window means (single steps diverge chaotically in either precision): every window
of the bf16 run within 5 % of the fp32 run's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.05


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/embedded-full")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--runs", default="runs/bf16-tracking")
    p.add_argument("--out", default="results/bf16_tracking.json")
    args = p.parse_args(argv)
    procs, hist = {}, {}
    for prec in ("fp32", "bf16"):
        run = Path(args.runs) / prec
        if not (run / "history.json").is_file():
            procs[prec] = subprocess.Popen(
                [sys.executable, "-m", "recipes.pretrain", "--config", "configs/pretrain/tiny.yaml",
                 f"data.root={args.data}", "data.shards=null", f"run_dir={run}", f"train.max_steps={args.steps}",
                 "train.log_every=1",
                 "train.progress=false", f"train.precision={prec}", "train.threads=1"],
                cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for prec, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"the {prec} run failed (exit {proc.returncode})")
    for prec in ("fp32", "bf16"):
        hist[prec] = np.array([h["loss"] for h in json.loads((Path(args.runs) / prec / "history.json").read_text())])
    a, b = hist["fp32"], hist["bf16"]
    windows = [(int(i + 10), float(a[i:i + 10].mean()), float(b[i:i + 10].mean())) for i in range(0, len(a) - 9, 10)]
    rel = max(abs(x - y) / x for _, x, y in windows)
    out = {"steps": len(a), "fp32_loss": a.round(5).tolist(), "bf16_loss": b.round(5).tolist(),
           "window_means": [{"to_step": s, "fp32": round(x, 4), "bf16": round(y, 4)} for s, x, y in windows],
           "max_window_rel_diff": round(rel, 4), "max_step_abs_diff": round(float(np.abs(a - b).max()), 4),
           "tolerance": TOLERANCE, "tracks": rel <= TOLERANCE,
           "command": "python bench/bf16_tracking.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_loss")}, indent=1))
    return 0 if out["tracks"] else 1


if __name__ == "__main__":
    sys.exit(main())
