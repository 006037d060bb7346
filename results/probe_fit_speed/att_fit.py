"""Time attentive-probe fits on the features att_bench.py saved ($FEATS, default runs/probe_fit_speed/kw_feats.pt).

    [BF=1] [LR=1e-3] python results/probe_fit_speed/att_fit.py EPOCHS [EPOCHS ...] [--out-dir DIR]

One fit per EPOCHS value (seed 0, weight decay 0.05, batch 256); prints its time, test accuracies, best epoch and
valid curve, and with ``--out-dir`` writes them to ``DIR/att_fit.json`` through ``eval.results.write_results``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("epochs", nargs="+", type=int)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    import torch

    from eval import probes as P
    from eval.embeddings import make_probe
    from eval.results import write_results

    torch.set_num_threads(1)
    feats = os.environ.get("FEATS", "runs/probe_fit_speed/kw_feats.pt")
    lr, bf16 = float(os.environ.get("LR", "1e-3")), os.environ.get("BF", "0") == "1"
    d = torch.load(feats, weights_only=True)
    f, y, n = d["feats"], d["labels"], d["n"]
    fits = []
    for ep in args.epochs:
        t = time.time()
        probe, key = make_probe("attentive", f["train"], n)
        h = P.fit_probe(probe, f["train"][key], y["train"], f["valid"][key], y["valid"], seed=0, epochs=ep, lr=lr,
                        bf16=bf16, weight_decay=0.05, batch_size=256)
        acc = {r: P.evaluate_probe(probe, f[r][key], y[r])["accuracy"] for r in ["test", "test_xengine"]}
        seconds = time.time() - t
        print(ep, f"{seconds:.1f}s", acc, "best_epoch", h["best_epoch"], [round(v, 3) for v in h["valid_metric"]],
              flush=True)
        fits.append({"epochs": ep, "seconds": round(seconds, 1), "accuracy": acc, "best_epoch": h["best_epoch"],
                     "valid_metric": h["valid_metric"]})
    if args.out_dir:
        config = {"features": feats, "lr": lr, "bf16": bf16, "weight_decay": 0.05, "batch_size": 256,
                  "threads": torch.get_num_threads()}
        write_results(args.out_dir, "att_fit", {"fits": fits}, config, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
