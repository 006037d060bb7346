"""Prototype: align the ALM projector (no LLM forward) so the mean projected audio embedding picks the right option
by cosine to the options' word embeddings; then closed-QA zero-shot with frozen LLM (run B of ``summary.json``
trained a stage from this artifact; the kit's ``train.align_steps`` does the alignment now).

    [DATA=...] [ENCODER=...] [STEPS=300] [TAU=0.1] [NOEVAL=1] python results/alm_recipe_probe/align_proto.py OUT \
        [override ...]

Saves the aligned model to ``OUT/artifact``; unless ``NOEVAL`` is set, writes the closed-QA evaluation to
``OUT/qa.json`` through ``eval.results.write_results``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

CONFIG = "configs/alm/stage1.yaml"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.exit(__doc__)
    out, overrides = argv[0], argv[1:]
    import torch
    import torch.nn.functional as F

    from eval.alm_qa import evaluate_closed, sample_per_qtype
    from eval.results import write_results
    from mosaic_alm.artifact import build_from, save_artifact
    from mosaic_alm.data import load_records
    from mosaic_alm.featurizer import AudioFeaturizer
    from mosaic_core.config import load_config

    torch.set_num_threads(1)
    root = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
    enc = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")  # the default run's encoder
    steps, tau = int(os.environ.get("STEPS", "300")), float(os.environ.get("TAU", "0.1"))
    cfg = load_config(CONFIG, [f"audio.encoder={enc}", f"data.root={root}", "data.qtypes=null", *overrides])
    model = build_from(cfg, None)
    model.train()
    model.apply_trainable(verbose=False)
    tok = model.tokenizer
    emb = model.base_llm().get_input_embeddings().weight.detach()
    recs = load_records(root, "train", None, "closed", 0, 0, None)
    clips = sorted({r["audio_path"] for r in recs})
    cid = {c: i for i, c in enumerate(clips)}
    fz = AudioFeaturizer.for_model(model)
    fz.precompute(clips)
    X = fz.tokens(clips).float()
    print("tokens", X.shape, flush=True)
    pick = torch.randperm(len(clips), generator=torch.Generator().manual_seed(0))[:256]
    model.calibrate_projector(X[pick])
    words = sorted({o for r in recs for o in r["options"]})
    wid = {w: i for i, w in enumerate(words)}
    P = torch.stack([emb[tok(w, add_special_tokens=False)["input_ids"]].mean(0) for w in words]).float()
    Pn = F.normalize(P, dim=-1)
    ci = torch.tensor([cid[r["audio_path"]] for r in recs])
    ans = torch.tensor([wid[r["output"]] for r in recs])
    optmask = torch.zeros(len(recs), len(words), dtype=torch.bool)
    for i, r in enumerate(recs):
        optmask[i, [wid[o] for o in r["options"]]] = True
    opt = torch.optim.AdamW(model.projector.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    t = time.time()
    for step in range(steps):
        idx = torch.randint(len(recs), (256,), generator=g)
        z = model.projector(X[ci[idx]]).mean(1)
        logits = F.normalize(z, dim=-1) @ Pn.T / tau
        logits = logits.masked_fill(~optmask[idx], -1e4)
        loss = F.cross_entropy(logits, ans[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == ans[idx]).float().mean()
            print(step, f"{loss.item():.3f} acc {acc:.3f} {time.time() - t:.0f}s", flush=True)
    model.eval()
    save_artifact(model, f"{out}/artifact", cfg, meta={"stage": 1, "seed": 0})
    if os.environ.get("NOEVAL"):
        return 0
    test = sample_per_qtype(load_records(root, "test", None, "closed", 0, 0, None), 120, 0)
    res = evaluate_closed(model, test)
    print(json.dumps({q: round(v.get("exact_match", v.get("exact", 0)), 3) if isinstance(v, dict) else v
                      for q, v in res["per_qtype"].items()}))
    print("overall", res["overall"])
    config = {"config_file": CONFIG, "overrides": overrides, "steps": steps, "tau": tau, "data": root, "encoder": enc}
    write_results(out, "qa", res, config, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
