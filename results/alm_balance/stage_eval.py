"""One ALM stage as the default pipeline trains it (stage 3 from a fresh projector, the default recipe), then closed
QA on the pipeline's 120 test questions (15 per question type), with the per-question answers.
    DATA=... ENCODER=... python results/alm_balance/stage_eval.py OUT [override ...]"""
import json, os, sys
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from mosaic_core.config import load_config
from recipes.pipeline import PRESETS
from recipes.train_alm import train_stage
from mosaic_alm.artifact import load_alm
from mosaic_alm.data import load_records, question_text
from mosaic_alm.generation import generate_answers
from eval.alm_qa import evaluate_closed, sample_per_qtype

root, enc = os.environ["DATA"], os.environ["ENCODER"]
out, overrides = sys.argv[1], sys.argv[2:]
recipe = [o for o in PRESETS["default"]["alm_recipe"] if o.split("=")[0] not in {x.split("=")[0] for x in overrides}]
cfg = load_config("configs/alm/stage3.yaml", [f"data.root={root}", f"audio.encoder={enc}", "train.init_from=null",
                                              "train.examples=1000", f"output_dir={out}", "name=x",
                                              "train.eval_batches=0", *recipe, *overrides])
s = train_stage(cfg, quiet=True)
print("train", s["steps"], s["train_seconds"], s["first_loss"], s["last_loss"], s.get("align"), flush=True)
model = load_alm(s["artifact"]); model.eval()
test = sample_per_qtype(load_records(root, "test", None, "closed", 0, 0, None), 120, 0)
res = evaluate_closed(model, test)
audio = [r["audio_path"] if model.cfg.audio.enabled else None for r in test]
preds = generate_answers(model, audio, [question_text(r) for r in test], batch_size=16, max_new_tokens=8)
res["answers"] = [dict(id=r["id"], qtype=r["qtype"], label=r["output"], prediction=p) for r, p in zip(test, preds)]
res["overrides"], res["recipe"], res["train"] = overrides, recipe, {k: v for k, v in s.items() if k != "artifact"}
print(json.dumps({q: round(v.get("exact_match", 0), 3) for q, v in res["per_qtype"].items()}))
print("overall", res["overall"], flush=True)
json.dump(res, open(f"{out}/qa.json", "w"), indent=1, default=str)
