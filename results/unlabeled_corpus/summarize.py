"""Summarise the corpus experiment (pretrain_runs.sh, evaluate.sh; mixed_runs.sh's arm where it ran): per arm
(labeled, corpus, mixed), the mean ± std over the
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

ARMS, SEEDS = ("labeled", "corpus", "mixed"), (0, 1, 2)
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
    arms = ARMS if (runs / "eval-mixed" / "encoder_eval.json").is_file() else ARMS[:2]
    if "mixed" in arms:  # its own eval-encoder run: the same nested draws (seeded), MFCC fitted again
        mixed = json.loads((runs / "eval-mixed" / "encoder_eval.json").read_text())["numbers"]["few_label"]["tasks"]
        for task, encs in mixed.items():
            for enc, ks in encs.items():
                if enc == "mfcc_logreg":
                    same = all(abs(ks[k][r]["accuracy"]["mean"] - few[task][enc][k][r]["accuracy"]["mean"]) < 1e-9
                               for k in ks for r in ks[k])
                    if not same:
                        raise SystemExit(f"{task}: MFCC differs between the two evaluations (not the same draws)")
                else:
                    few[task][enc] = ks
    seconds = {}
    for arm in arms:
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
                for arm in arms:
                    vals = [acc(f"{arm}-s{s}") for s in SEEDS]
                    row[arm] = _stat(vals)
                    row[f"{arm}_minus_random"] = _stat([v - row["random"] for v in vals])
                    row[f"{arm}_minus_mfcc"] = _stat([v - row["mfcc"] for v in vals])
                table.setdefault(f"{task} {role}", {})[k] = row
                lines.append(f"| {task.split('_')[1]} {role} | {k} | {row['mfcc']:.3f} | {row['random']:.3f} | "
                             + " | ".join(f"{row[a]['mean']:.3f} ± {row[a]['std']:.3f}" for a in arms) + " | "
                             + " | ".join(f"{row[f'{a}_minus_random']['mean']:+.3f}" for a in arms) + " | "
                             + " | ".join(f"{row[f'{a}_minus_mfcc']['mean']:+.3f}" for a in arms) + " |")
    cols = ([f"{a} (3 seeds)" for a in arms] + [f"{a} - random" for a in arms] + [f"{a} - MFCC" for a in arms])
    head = ("| task split | labels a class | MFCC | random | " + " | ".join(cols) + " |\n|"
            + "---|" * (4 + len(cols)))
    print(head + "\n" + "\n".join(lines))
    pre = {arm: _stat([seconds[f"{arm}-s{s}"]["user"] for s in SEEDS]) for arm in arms}
    print("pretraining user seconds:", json.dumps(pre))
    write_results(Path(args.out), "unlabeled_corpus", {"table": table, "pretrain_seconds": seconds,
                                                        "pretrain_user_seconds": pre},
                  {"runs": str(runs), "arms": list(arms), "seeds": list(SEEDS),
                   "commands": [f"bash results/unlabeled_corpus/{job}.sh data/embedded-full runs/unlabeled_corpus"
                                for job in ("pretrain_runs", "evaluate")]
                   + (["python results/unlabeled_corpus/labeled_audio_shards.py data/embedded-full",
                       "bash results/unlabeled_corpus/mixed_runs.sh data/embedded-full runs/unlabeled_corpus"]
                      if "mixed" in arms else [])
                   + ["python results/unlabeled_corpus/summarize.py runs/unlabeled_corpus"]},
                  seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
