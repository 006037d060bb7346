"""The fine-tuned figures of a pipeline run next to its frozen probes: one markdown table per test split.

    python results/finetune_lpft/summary.py RUN_DIR [--json results/finetune_lpft/summary.json]

Reads ``RUN_DIR/finetune/<task>-<encoder>-seed<k>/finetune.json`` (written by ``run.sh``) and
``RUN_DIR/eval-encoder/encoder_eval.json`` (the pipeline's encoder evaluation: fair linear and attentive probes).
Writes the tables through ``eval.results.write_results`` (``numbers``: ``tables``, ``train_seconds``; ``config``:
the run folder; commit, versions, machine and command line).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

ENCODERS = ("audiomosaic", "mae", "random")


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values)
    return f"{a.mean():.3f}" + (f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--json", default="results/finetune_lpft/summary.json")
    args = p.parse_args(argv)
    from eval.results import write_results

    run = Path(args.run)
    finetuned: dict = defaultdict(list)  # (task, encoder, split) -> accuracies over seeds
    seconds: dict = defaultdict(list)
    for f in sorted((run / "finetune").glob("*/finetune.json")):
        task, enc, _ = f.parent.name.split("-")
        n = json.loads(f.read_text())["numbers"]
        for split, m in n["test"].items():
            finetuned[(task, enc, split)].append(m["accuracy"])
        seconds[(task, enc)].append(n["train_seconds"])
    probes = json.loads((run / "eval-encoder" / "encoder_eval.json").read_text())["numbers"]["tasks"]
    out, lines = {}, []
    for name, per in probes.items():
        task = name.removeprefix("embedded_")
        for split in per["mfcc_logreg"]:
            rows = {"mfcc_logreg": {"logreg": per["mfcc_logreg"][split]["accuracy"]["mean"]}}
            for enc in ENCODERS:
                rows[enc] = {probe: per[enc][probe][split]["accuracy"]["mean"] for probe in ("linear", "attentive")
                             if probe in per.get(enc, {})}
                rows[enc]["finetuned"] = finetuned.get((task, enc, split), [])
            out[f"{task} {split}"] = rows
            lines += [f"\n{task} {split} (accuracy; fine-tuned: mean ± std over seeds)\n",
                      "| encoder | fair linear | attentive | fine-tuned (LP-FT) |", "|---|---|---|---|",
                      f"| MFCC + logistic regression | {rows['mfcc_logreg']['logreg']:.3f} | | |"]
            lines += [f"| {enc} | {rows[enc].get('linear', float('nan')):.3f} | "
                      f"{rows[enc].get('attentive', float('nan')):.3f} | {_fmt(rows[enc]['finetuned'])} |"
                      for enc in ENCODERS]
    lines.append("\nfine-tuning seconds (one thread, two runs side by side): " + ", ".join(
        f"{t}/{e} {np.mean(s):.0f}" for (t, e), s in sorted(seconds.items())))
    write_results(Path(args.json).parent, Path(args.json).stem,
                  {"tables": out, "train_seconds": {f"{t}/{e}": s for (t, e), s in seconds.items()}},
                  {"run": str(run)}, seed=None)
    print("\n".join(lines).lstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
