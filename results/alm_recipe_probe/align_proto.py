"""Prototype: align the ALM projector (no LLM forward) so the mean projected audio embedding picks the right option
by cosine to the options' word embeddings; then closed-QA zero-shot with frozen LLM."""
import sys, time, json, os, torch, numpy as np
torch.set_num_threads(1)
from mosaic_core.config import load_config
from mosaic_alm.artifact import build_from, save_artifact
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.data import load_records
from eval.alm_qa import evaluate_closed, sample_per_qtype
ROOT = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
ENC = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")  # the default run's encoder
STEPS = int(os.environ.get("STEPS", "300")); TAU = float(os.environ.get("TAU", "0.1")); OUT = sys.argv[1]
cfg = load_config("configs/alm/stage1.yaml", [f"audio.encoder={ENC}", f"data.root={ROOT}", "data.qtypes=null", *sys.argv[2:]])
model = build_from(cfg, None); model.train(); model.apply_trainable(verbose=False)
tok = model.tokenizer; emb = model.base_llm().get_input_embeddings().weight.detach()
recs = load_records(ROOT, "train", None, "closed", 0, 0, None)
clips = sorted({r["audio_path"] for r in recs}); cid = {c: i for i, c in enumerate(clips)}
fz = AudioFeaturizer.for_model(model); fz.precompute(clips)
X = fz.tokens(clips).float(); print("tokens", X.shape, flush=True)
pick = torch.randperm(len(clips), generator=torch.Generator().manual_seed(0))[:256]
model.calibrate_projector(X[pick])
words = sorted({o for r in recs for o in r["options"]}); wid = {w: i for i, w in enumerate(words)}
P = torch.stack([emb[tok(w, add_special_tokens=False)["input_ids"]].mean(0) for w in words]).float()
Pn = torch.nn.functional.normalize(P, dim=-1)
ci = torch.tensor([cid[r["audio_path"]] for r in recs]); ans = torch.tensor([wid[r["output"]] for r in recs])
optmask = torch.zeros(len(recs), len(words), dtype=torch.bool)
for i, r in enumerate(recs): optmask[i, [wid[o] for o in r["options"]]] = True
opt = torch.optim.AdamW(model.projector.parameters(), lr=1e-3, weight_decay=0.0)
g = torch.Generator().manual_seed(0); t = time.time()
for step in range(STEPS):
    idx = torch.randint(len(recs), (256,), generator=g)
    z = model.projector(X[ci[idx]]).mean(1)
    logits = torch.nn.functional.normalize(z, dim=-1) @ Pn.T / TAU
    logits = logits.masked_fill(~optmask[idx], -1e4)
    loss = torch.nn.functional.cross_entropy(logits, ans[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0 or step == STEPS - 1:
        acc = (logits.argmax(-1) == ans[idx]).float().mean()
        print(step, f"{loss.item():.3f} acc {acc:.3f} {time.time()-t:.0f}s", flush=True)
model.eval()
save_artifact(model, f"{OUT}/artifact", cfg, meta={"stage": 1, "seed": 0})
if os.environ.get("NOEVAL"): sys.exit(0)
test = sample_per_qtype(load_records(ROOT, "test", None, "closed", 0, 0, None), 120, 0)
res = evaluate_closed(model, test)
print(json.dumps({q: round(v.get("exact_match", v.get("exact", 0)), 3) if isinstance(v, dict) else v for q, v in res["per_qtype"].items()}))
print("overall", res["overall"])
