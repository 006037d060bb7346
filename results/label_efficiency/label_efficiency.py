"""Fair linear read-out accuracy against the number of labelled training clips per class, for a pipeline run's
encoders (contrastive, MAE), random init and MFCC.

    python results/label_efficiency/label_efficiency.py RUN_DIR DATA [--ks 5,10,20,50,0] [--draws 3] \
        [--out results/label_efficiency/label_efficiency.json]

For each embedded task the features of every clip are computed once per encoder (last layer, pooled, bf16: what the
pipeline's linear probe reads; MFCC: 40 coefficients, mean + std). For k labelled clips per class (0 = the whole
train split) and each draw seed, k training clips of each class are drawn, the fair read-out (standardised logistic
regression, C chosen on the whole valid split) is fitted on them and scored on every test split; mean ± std over
the draws. Random init: ``random:tiny`` after ``torch.manual_seed(0)``, as the pipeline's. The JSON is written
through ``eval.results.write_results`` (``numbers``: ``tasks``, ``seconds``; ``config``: the run, data, draws, k
values, encoders and task recipe files; commit, versions, machine and command line).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

TASKS = ("keywords", "instruments", "environment")


def draw(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` clips of each class (all of a class with fewer), drawn without replacement."""
    if k <= 0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--ks", default="5,10,20,50,0")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--out", default="results/label_efficiency/label_efficiency.json")
    args = p.parse_args(argv)
    import torch

    from encoder.data.tasks import TaskConfig, load_task
    from encoder.hf import resolve_encoder
    from eval.embeddings import extract_features, split_waves
    from eval.mfcc import mfcc_features
    from eval.probes import fit_logreg
    from eval.results import write_results
    from mosaic_core.runtime import use_bf16

    torch.set_num_threads(1)
    bf16 = use_bf16("auto", torch.device("cpu"))
    ks = [int(k) for k in args.ks.split(",")]
    ref = f"{args.run}/pretrain-audiomosaic/encoder"
    encoders = {"audiomosaic": ref, "mae": f"{args.run}/pretrain-mae/encoder", "random": "random:tiny"}
    results: dict = {}
    t0 = time.time()
    for name in TASKS:
        task = load_task(TaskConfig(config=f"configs/data/embedded_{name}.yaml", data_root=args.data, cache="never"))
        split = {role: (ws, y.numpy()) for role, (ws, y) in split_waves(task).items()}
        feats = {"mfcc_logreg": {role: mfcc_features([w.numpy() for w in ws]) for role, (ws, _) in split.items()}}
        for enc, path in encoders.items():
            torch.manual_seed(0)
            model = resolve_encoder(path, reference=ref).eval()
            fb = model.config.fbank_config(task.fbank.target_frames)
            feats[enc] = {role: np.asarray(extract_features(model, ws, fb, 64, bf16=bf16)["last"])
                          for role, (ws, _) in split.items()}
        ytr = split["train"][1]
        res = results[name] = {"train_per_class": int(np.bincount(ytr).min()), "by_k": {}}
        for k in ks:
            row = res["by_k"][str(k) if k > 0 else "all"] = {}
            for enc, f in feats.items():
                accs: dict = {}
                for seed in range(args.draws if k > 0 else 1):
                    idx = draw(ytr, k, seed)
                    r = fit_logreg(f["train"][idx], ytr[idx], f["valid"], split["valid"][1], seed=seed)
                    for role in split:
                        if role.startswith("test"):
                            accs.setdefault(role, []).append(r.evaluate(f[role], split[role][1])["accuracy"])
                row[enc] = {role: {"mean": round(float(np.mean(a)), 4), "std": round(float(np.std(a, ddof=1)), 4)
                                   if len(a) > 1 else 0.0} for role, a in accs.items()}
            print(json.dumps({"task": name, "k": k, **{e: {r: v["mean"] for r, v in m.items()}
                                                      for e, m in row.items()}}), flush=True)
    config = {"run": args.run, "data": args.data, "draws": args.draws, "ks": ks, "encoders": encoders,
              "task_configs": [f"configs/data/embedded_{name}.yaml" for name in TASKS]}
    write_results(Path(args.out).parent, Path(args.out).stem, {"seconds": round(time.time() - t0), "tasks": results},
                  config, seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
