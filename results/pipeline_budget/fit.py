"""Fit the default pipeline's job costs (mosaic_core/budget.py) to measured runs of the full budget.

    python results/pipeline_budget/fit.py RUN_FOLDER RUN_FOLDER [...] [--out results/pipeline_budget/fit.json]

Each RUN_FOLDER is a finished default pipeline's run folder (``runs/pipeline`` of a fresh clone) or a committed copy
of one with the ALM variants' stage summaries (``alm_summaries.json``). ``pipeline.json`` gives each job's own
seconds (the data, the contrastive pretraining, the MAE baseline's ``seconds_alongside``, the encoder evaluation,
each ALM variant's process, the ALM evaluation) and the machine's matmul throughput ``G``
(``expected.matmul_gflops``); the stage summaries give the part of a variant's seconds that the budget scale
multiplies (its training loops; the projector alignment is not scaled). Every job is fitted as ``a + b / G`` and a
variant's scaled part as ``sa + sb / G`` (two runs: exactly; more: least squares; a negative coefficient is set to
0 and the other refitted). The runs' measured wall times are printed beside the schedule's prediction.
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
        return json.loads(saved.read_text())["variants"]
    out = {}
    for variant in sorted(p.name for p in (run / "alm").iterdir() if p.is_dir()):
        out[variant] = [json.loads(p.read_text()) for p in sorted((run / "alm" / variant).glob("stage*/summary.json"))]
    return out


def scalable_seconds(stages: list[dict]) -> float:
    """Seconds the ALM budget scale multiplies: a variant's training loops (the projector alignment keeps its
    steps at every scale)."""
    return sum(s.get("train_seconds", 0.0) for s in stages)


def job_times(run: Path) -> tuple[float, float, dict, dict]:
    """(G, the wall time, {job: seconds}, {variant: scaled seconds}) of one run."""
    pipe = json.loads((run / "pipeline.json").read_text())
    if (pipe.get("budget") or {}).get("scale", 1.0) != 1.0:
        raise SystemExit(f"fit.py: {run} ran a scaled ALM budget; fit runs of the full budget only")
    st = pipe["stages"]
    times = {"data": st["data"]["seconds"], "pretrain_audiomosaic": st["pretrain_audiomosaic"]["seconds"],
             "pretrain_mae": st["pretrain_mae"].get("seconds_alongside") or st["pretrain_mae"]["seconds"],
             "eval_encoder": st["eval_encoder"]["seconds"], "eval_alm": st["eval_alm"]["seconds"]}
    scaled = {}
    for variant, stages in alm_summaries(run).items():
        scaled[variant] = scalable_seconds(stages)
        times[variant] = pipe["alm_variant_seconds"][variant] - scaled[variant]
    return pipe["expected"]["matmul_gflops"], pipe["total_seconds"], times, scaled


def fit_ab(inv_g: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """``t = a + b / G`` by least squares, both non-negative (a negative one is set to 0 and the other refitted)."""
    a, b = np.linalg.lstsq(np.stack([np.ones_like(inv_g), inv_g], 1), t, rcond=None)[0]
    if a < 0:
        a, b = 0.0, float(inv_g @ t / (inv_g @ inv_g))
    elif b < 0:
        a, b = float(t.mean()), 0.0
    return round(float(a), 1), round(float(b), 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="results/pipeline_budget/fit.json")
    args = p.parse_args(argv)
    from eval.results import write_results
    from mosaic_core.budget import predict_seconds

    runs = [job_times(Path(r)) for r in args.runs]
    inv = np.array([1 / g for g, *_ in runs])
    jobs = {}
    for name in runs[0][2]:
        a, b = fit_ab(inv, np.array([times[name] for _, _, times, _ in runs]))
        jobs[name] = {"a": a, "b": b}
        if name in runs[0][3]:
            sa, sb = fit_ab(inv, np.array([scaled[name] for *_, scaled in runs]))
            jobs[name].update(sa=sa, sb=sb)
    costs = {"source": "results/pipeline_budget", "jobs": jobs}
    rows = [{"run": r, "G": g, "measured_s": wall, "predicted_s": round(predict_seconds(costs, g), 1)}
            for r, (g, wall, *_) in zip(args.runs, runs)]
    print(json.dumps({"costs": costs, "runs": rows}, indent=1))
    out = Path(args.out)
    write_results(out.parent, out.stem, {"costs": costs, "runs": rows}, {"runs": args.runs}, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
