"""Summarise the corpus experiment (pretrain_runs.sh, evaluate.sh): per arm (labeled, corpus), the mean ± std over the
3 pretraining seeds of each task's test accuracy at each number of labels a class (each seed's value: the mean over
the 3 draws), the margins over random init and MFCC, and the pretraining seconds; writes unlabeled_corpus.json
(``write_results``: commit, versions, machine) and prints a Markdown table.

    python results/unlabeled_corpus/summarize.py runs/unlabeled_corpus [--out results/unlabeled_corpus]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ARMS, SEEDS = ("labeled", "corpus"), (0, 1, 2)
ROLES = {"embedded_keywords": ["test", "test_xengine"], "embedded_instruments": ["test"],
         "embedded_environment": ["test"]}


def _stat(xs):
    a = np.asarray(xs, dtype=float)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)), 4) if len(a) > 1 else 0.0,
            "runs": [round(float(v), 4) for v in a]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs")
    p.add_argument("--out", default="results/unlabeled_corpus")
    args = p.parse_args(argv)
    from eval.results import write_results

    runs = Path(args.runs)
    ev = json.loads((runs / "eval" / "encoder_eval.json").read_text())
    few = ev["numbers"]["few_label"]["tasks"]
    seconds = {}
    for arm in ARMS:
        for s in SEEDS:
            m = re.match(r"([\d.]+) s wall, ([\d.]+) s user", (runs / f"{arm}-s{s}.time").read_text())
            seconds[f"{arm}-s{s}"] = {"wall": float(m.group(1)), "user": float(m.group(2))}
    table, lines = {}, []
    for task, roles in ROLES.items():
        for role in roles:
            ks = list(few[task]["random"])
            for k in ks:
                def acc(enc, task=task, k=k, role=role):
                    return few[task][enc][k][role]["accuracy"]["mean"]
                row = {"random": acc("random"), "mfcc": acc("mfcc_logreg")}
                for arm in ARMS:
                    vals = [acc(f"{arm}-s{s}") for s in SEEDS]
                    row[arm] = _stat(vals)
                    row[f"{arm}_minus_random"] = _stat([v - row["random"] for v in vals])
                    row[f"{arm}_minus_mfcc"] = _stat([v - row["mfcc"] for v in vals])
                table.setdefault(f"{task} {role}", {})[k] = row
                lines.append(f"| {task.split('_')[1]} {role} | {k} | {row['mfcc']:.3f} | {row['random']:.3f} | "
                             + " | ".join(f"{row[a]['mean']:.3f} ± {row[a]['std']:.3f}" for a in ARMS) + " | "
                             + " | ".join(f"{row[f'{a}_minus_random']['mean']:+.3f}" for a in ARMS) + " | "
                             + " | ".join(f"{row[f'{a}_minus_mfcc']['mean']:+.3f}" for a in ARMS) + " |")
    head = ("| task split | labels a class | MFCC | random | labeled (3 seeds) | corpus (3 seeds) | labeled - random | "
            "corpus - random | labeled - MFCC | corpus - MFCC |\n|---|---|---|---|---|---|---|---|---|---|")
    print(head + "\n" + "\n".join(lines))
    pre = {arm: _stat([seconds[f"{arm}-s{s}"]["user"] for s in SEEDS]) for arm in ARMS}
    print("pretraining user seconds:", json.dumps(pre))
    write_results(Path(args.out), "unlabeled_corpus", {"table": table, "pretrain_seconds": seconds,
                                                        "pretrain_user_seconds": pre},
                  {"runs": str(runs), "arms": list(ARMS), "seeds": list(SEEDS),
                   "commands": [f"bash results/unlabeled_corpus/{job}.sh data/embedded-full runs/unlabeled_corpus"
                                for job in ("pretrain_runs", "evaluate")]
                   + ["python results/unlabeled_corpus/summarize.py runs/unlabeled_corpus"]},
                  seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
