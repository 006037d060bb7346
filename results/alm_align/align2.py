"""Align the projector (no LLM forward) on every training clip's closed questions: the mean projected slot picks the
right option by cosine to the options' word embeddings (+ a norm term); report option accuracy on test per qtype."""
import sys, time, json, os, torch, numpy as np
torch.set_num_threads(1)
import torch.nn.functional as F
from collections import defaultdict
from mosaic_core.config import load_config
from mosaic_alm.artifact import build_from, save_artifact
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.data import load_records
ROOT = os.environ.get("DATA", "data/embedded-full"); ENC = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")
STEPS = int(os.environ.get("STEPS", "1500")); TAU = float(os.environ.get("TAU", "0.07")); OUT = sys.argv[1]
cfg = load_config("configs/alm/stage2.yaml", [f"audio.encoder={ENC}", f"data.root={ROOT}", "data.qtypes=null", *sys.argv[2:]])
model = build_from(cfg, None); model.train(); model.apply_trainable(verbose=False)
tok = model.tokenizer; emb = model.base_llm().get_input_embeddings().weight.detach().float()
fz = AudioFeaturizer.for_model(model)
def prep(split):
    recs = load_records(ROOT, split, None, "closed", 0, 0, None)
    clips = sorted({r["audio_path"] for r in recs}); cid = {c: i for i, c in enumerate(clips)}
    fz.precompute(clips); X = fz.tokens(clips).float()
    return recs, X, torch.tensor([cid[r["audio_path"]] for r in recs])
tr, Xtr, citr = prep("train"); te, Xte, cite = prep("test")
print("tokens", Xtr.shape, Xte.shape, flush=True)
pick = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(0))[:256]
model.calibrate_projector(Xtr[pick])
words = sorted({o for r in tr + te for o in r["options"]}); wid = {w: i for i, w in enumerate(words)}
P = torch.stack([emb[tok(" " + w, add_special_tokens=False)["input_ids"]].mean(0) for w in words])
Pn = F.normalize(P, dim=-1); target_norm = float(P.norm(dim=-1).mean())
def targets(recs):
    ans = torch.tensor([wid[r["output"]] for r in recs]); m = torch.zeros(len(recs), len(words), dtype=torch.bool)
    for i, r in enumerate(recs): m[i, [wid[o] for o in r["options"]]] = True
    return ans, m
atr, mtr = targets(tr); ate, mte = targets(te)
def logits_of(z, m): return (F.normalize(z, dim=-1) @ Pn.T / TAU).masked_fill(~m, -1e4)
proj = model.projector
opt = torch.optim.AdamW(proj.parameters(), lr=float(os.environ.get("LR", "1e-3")), weight_decay=0.01)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=STEPS, pct_start=0.05)
g = torch.Generator().manual_seed(0); t = time.time()
def evaluate():
    proj.eval(); ok = defaultdict(list)
    with torch.no_grad():
        for s in range(0, len(te), 512):
            z = proj(Xte[cite[s:s+512]]).mean(1)
            pred = logits_of(z, mte[s:s+512]).argmax(-1)
            for r, p in zip(te[s:s+512], pred.tolist()): ok[r["qtype"]].append(words[p] == r["output"])
    proj.train(); return {q: round(float(np.mean(v)), 3) for q, v in sorted(ok.items())}
for step in range(STEPS):
    idx = torch.randint(len(tr), (256,), generator=g)
    zs = proj(Xtr[citr[idx]]); z = zs.mean(1)
    loss = F.cross_entropy(logits_of(z, mtr[idx]), atr[idx]) + 0.1 * (zs.norm(dim=-1) / target_norm - 1).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step % 250 == 0 or step == STEPS - 1:
        print(step, f"{loss.item():.3f} {time.time()-t:.0f}s", evaluate() if step % 500 == 0 or step == STEPS - 1 else "", flush=True)
model.eval()
save_artifact(model, f"{OUT}/artifact", cfg, meta={"stage": 1, "seed": 0})
json.dump({"test_option_acc": evaluate(), "steps": STEPS, "tau": TAU, "overrides": sys.argv[2:]}, open(f"{OUT}/align.json", "w"))
