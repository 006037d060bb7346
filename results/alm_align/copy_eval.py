"""Stage with a copy warm-up: for the first WARM of the steps the audio slots carry
alpha * (answer word embedding) + (1 - alpha) * projected audio, alpha falling linearly 1 -> 0; then plain audio."""
import os, sys, json, torch
torch.set_num_threads(1)
from mosaic_core.config import load_config
from mosaic_alm import audio_lm as M
from mosaic_alm.data import load_records
ROOT = os.environ.get("DATA", "data/embedded-full"); WARM = float(os.environ.get("WARM", "0.5")); HOLD = float(os.environ.get("HOLD", "0.0"))
out, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config("configs/alm/stage2.yaml", [f"data.root={ROOT}", "data.qtypes=null", f"output_dir={out}", "name=x", "train.eval_batches=0", *overrides])
recs = load_records(ROOT, "train", None, "closed", 0, int(cfg.get("seed", 0)), None)
n_ex = int(cfg["train"]["examples"]); bs = int(cfg["train"]["batch_size"]); total = -(-n_ex // bs)
state = {"calls": 0, "rows": None}
orig_fwd, orig_embed = M.AudioLanguageModel.forward, M.AudioLanguageModel.embed
def fwd(self, input_ids, attention_mask, labels=None, index=None, **kw):
    state["rows"] = index if (labels is not None and self.training) else None
    return orig_fwd(self, input_ids, attention_mask, labels=labels, **kw)
def embed(self, input_ids, audio_mask=None, audio_tokens=None, spectrograms=None, *kit_copy):
    emb = orig_embed(self, input_ids, audio_mask, audio_tokens, spectrograms, *kit_copy)
    if state["rows"] is None or audio_mask is None:
        return emb
    step = state["calls"]; state["calls"] += 1
    frac = step / total
    alpha = 1.0 if frac < HOLD else max(0.0, 1.0 - (frac - HOLD) / max(1e-9, WARM - HOLD))
    if alpha <= 0:
        return emb
    E = self.base_llm().get_input_embeddings().weight
    tok = self.tokenizer
    words = torch.stack([E[tok(recs[i]["output"], add_special_tokens=False)["input_ids"]].mean(0) for i in state["rows"]]).to(emb.dtype)
    m = audio_mask.to(emb.device)
    k = int(m[0].sum())
    mixed = (1 - alpha) * emb[m].reshape(len(words), k, -1) + alpha * words[:, None, :]
    return emb.masked_scatter(m.unsqueeze(-1), mixed.reshape(-1, emb.shape[-1]))
M.AudioLanguageModel.forward, M.AudioLanguageModel.embed = fwd, embed
# the stage and its evaluation: results/alm_recipe_probe/stage_eval.py, run with the patch above in place
# (evaluation reads no training rows, so the patch is inert there)
import runpy
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "alm_recipe_probe", "stage_eval.py"), run_name="__main__")
