"""Fit the default pipeline's wall-time model (mosaic_core/budget.py) to measured runs of the full budget.

    python results/pipeline_budget/fit.py RUN_FOLDER RUN_FOLDER [...] [--out results/pipeline_budget/fit.json]

Each RUN_FOLDER is a finished default pipeline's run folder (``runs/pipeline`` of a fresh clone) or a committed copy
of one with the ALM variants' stage summaries: ``pipeline.json`` gives the wall time ``T`` and the machine's
matmul throughput ``G`` (``expected.matmul_gflops``); the ALM variants' ``alm/<variant>/stage*/summary.json`` (or
``alm_summaries.json`` in a committed copy) give the seconds the budget scale multiplies, ``W``: every variant's
training loop and projector alignment. The model: ``T = a + b / G`` and ``W = c / G``; scaling the ALM budget by
``s`` takes ``(1 - s) W`` core-seconds off work the two cores share, so ``T(G, s) = a + (b - c / 2) / G + s c / (2 G)``,
i.e. ``b_rest = b - c / 2`` and ``b_alm = c / 2``. Two runs fit ``a`` and ``b`` exactly (more by least squares);
``c`` is the least-squares slope of ``W`` against ``1 / G`` through the origin.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not


def alm_summaries(run: Path) -> dict:
    """{variant: [stage summary, ...]} of a run folder (or its committed copy)."""
    saved = run / "alm_summaries.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    out = {}
    for variant in sorted(p.name for p in (run / "alm").iterdir() if p.is_dir()):
        out[variant] = [json.loads(p.read_text()) for p in sorted((run / "alm" / variant).glob("stage*/summary.json"))]
    return out


def scalable_seconds(summaries: dict) -> float:
    """Core-seconds the ALM budget scale multiplies: every variant's training loop and projector alignment."""
    return sum(s.get("train_seconds", 0.0) + (s.get("align") or {}).get("seconds", 0.0)
               for stages in summaries.values() for s in stages)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="results/pipeline_budget/fit.json")
    args = p.parse_args(argv)
    from eval.results import write_results

    rows = []
    for run in map(Path, args.runs):
        pipe = json.loads((run / "pipeline.json").read_text())
        rows.append({"run": str(run), "T": pipe["total_seconds"], "G": pipe["expected"]["matmul_gflops"],
                     "W": round(scalable_seconds(alm_summaries(run)), 1), "precision": pipe.get("precision"),
                     "budget_scale": (pipe.get("budget") or {}).get("scale", 1.0)})
    if any(r["budget_scale"] != 1.0 for r in rows):
        raise SystemExit("fit.py: fit runs of the full budget only (budget scale 1)")
    inv = np.array([1 / r["G"] for r in rows])
    a, b = np.linalg.lstsq(np.stack([np.ones_like(inv), inv], 1), np.array([r["T"] for r in rows]), rcond=None)[0]
    c = float(inv @ np.array([r["W"] for r in rows]) / (inv @ inv))
    model = {"a": round(float(a), 1), "b_rest": round(float(b - c / 2), 1), "b_alm": round(c / 2, 1)}
    for r in rows:
        r["T_model"] = round(model["a"] + (model["b_rest"] + model["b_alm"]) / r["G"], 1)
    print(json.dumps({"model": model, "runs": rows}, indent=1))
    out = Path(args.out)
    write_results(out.parent, out.stem, {"model": model, "runs": rows}, {"runs": args.runs}, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
