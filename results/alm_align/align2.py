"""Align the projector (no LLM forward) on every training clip's closed questions: the mean projected slot picks the
right option by cosine to the options' word embeddings (+ a norm term); report option accuracy on test per qtype.

    [DATA=...] [ENCODER=...] [STEPS=1500] [TAU=0.07] [LR=1e-3] python results/alm_align/align2.py OUT [override ...]

The stage config is ``configs/alm/stage2.yaml`` with ``data.qtypes=null`` and the overrides given. Saves the aligned
model to ``OUT/artifact`` and writes ``OUT/align.json`` through ``eval.results.write_results``.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

CONFIG = "configs/alm/stage2.yaml"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.exit(__doc__)
    out, overrides = argv[0], argv[1:]
    import numpy as np
    import torch
    import torch.nn.functional as F

    from eval.results import write_results
    from mosaic_alm.artifact import build_from, save_artifact
    from mosaic_alm.data import load_records
    from mosaic_alm.featurizer import AudioFeaturizer
    from mosaic_core.config import load_config

    torch.set_num_threads(1)
    root = os.environ.get("DATA", "data/embedded-full")
    enc = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")
    steps, tau, lr = int(os.environ.get("STEPS", "1500")), float(os.environ.get("TAU", "0.07")), \
        float(os.environ.get("LR", "1e-3"))
    cfg = load_config(CONFIG, [f"audio.encoder={enc}", f"data.root={root}", "data.qtypes=null", *overrides])
    model = build_from(cfg, None)
    model.train()
    model.apply_trainable(verbose=False)
    tok = model.tokenizer
    emb = model.base_llm().get_input_embeddings().weight.detach().float()
    fz = AudioFeaturizer.for_model(model)

    def prep(split):
        recs = load_records(root, split, None, "closed", 0, 0, None)
        clips = sorted({r["audio_path"] for r in recs})
        cid = {c: i for i, c in enumerate(clips)}
        fz.precompute(clips)
        return recs, fz.tokens(clips).float(), torch.tensor([cid[r["audio_path"]] for r in recs])

    tr, x_tr, ci_tr = prep("train")
    te, x_te, ci_te = prep("test")
    print("tokens", x_tr.shape, x_te.shape, flush=True)
    pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))[:256]
    model.calibrate_projector(x_tr[pick])
    words = sorted({o for r in tr + te for o in r["options"]})
    wid = {w: i for i, w in enumerate(words)}
    P = torch.stack([emb[tok(" " + w, add_special_tokens=False)["input_ids"]].mean(0) for w in words])
    Pn = F.normalize(P, dim=-1)
    target_norm = float(P.norm(dim=-1).mean())

    def targets(recs):
        ans = torch.tensor([wid[r["output"]] for r in recs])
        m = torch.zeros(len(recs), len(words), dtype=torch.bool)
        for i, r in enumerate(recs):
            m[i, [wid[o] for o in r["options"]]] = True
        return ans, m

    a_tr, m_tr = targets(tr)
    _, m_te = targets(te)

    def logits_of(z, m):
        return (F.normalize(z, dim=-1) @ Pn.T / tau).masked_fill(~m, -1e4)

    proj = model.projector
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps,
                                                pct_start=0.05)
    g = torch.Generator().manual_seed(0)
    t = time.time()

    def evaluate():
        proj.eval()
        ok = defaultdict(list)
        with torch.no_grad():
            for s in range(0, len(te), 512):
                z = proj(x_te[ci_te[s:s + 512]]).mean(1)
                pred = logits_of(z, m_te[s:s + 512]).argmax(-1)
                for r, p in zip(te[s:s + 512], pred.tolist()):
                    ok[r["qtype"]].append(words[p] == r["output"])
        proj.train()
        return {q: round(float(np.mean(v)), 3) for q, v in sorted(ok.items())}

    for step in range(steps):
        idx = torch.randint(len(tr), (256,), generator=g)
        zs = proj(x_tr[ci_tr[idx]])
        z = zs.mean(1)
        loss = F.cross_entropy(logits_of(z, m_tr[idx]), a_tr[idx]) \
            + 0.1 * (zs.norm(dim=-1) / target_norm - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(step, f"{loss.item():.3f} {time.time() - t:.0f}s",
                  evaluate() if step % 500 == 0 or step == steps - 1 else "", flush=True)
    model.eval()
    save_artifact(model, f"{out}/artifact", cfg, meta={"stage": 1, "seed": 0})
    config = {"config_file": CONFIG, "overrides": overrides, "steps": steps, "tau": tau, "lr": lr, "data": root,
              "encoder": enc}
    write_results(out, "align", {"test_option_acc": evaluate(), "steps": steps, "tau": tau}, config, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
