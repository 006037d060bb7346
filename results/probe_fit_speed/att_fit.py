"""Time attentive-probe fits on the features att_bench.py saved ($FEATS, default runs/probe_fit_speed/kw_feats.pt).
Usage: [BF=1] [LR=1e-3] python results/probe_fit_speed/att_fit.py EPOCHS [EPOCHS ...]"""
import os, time, sys, torch
torch.set_num_threads(1)
from eval.embeddings import make_probe
from eval import probes as P
d = torch.load(os.environ.get("FEATS", "runs/probe_fit_speed/kw_feats.pt"), weights_only=True)
f, y, n = d["feats"], d["labels"], d["n"]
for ep in [int(a) for a in sys.argv[1:]]:
    t = time.time()
    probe, key = make_probe("attentive", f["train"], n)
    h = P.fit_probe(probe, f["train"][key], y["train"], f["valid"][key], y["valid"], seed=0, epochs=ep, lr=float(__import__("os").environ.get("LR","1e-3")), bf16=__import__("os").environ.get("BF","0")=="1", weight_decay=0.05, batch_size=256)
    acc = {r: P.evaluate_probe(probe, f[r][key], y[r])["accuracy"] for r in ["test", "test_xengine"]}
    print(ep, f"{time.time()-t:.1f}s", acc, "best_epoch", h["best_epoch"], [round(v,3) for v in h["valid_metric"]], flush=True)
