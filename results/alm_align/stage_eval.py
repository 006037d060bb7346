import os, sys, json, torch
torch.set_num_threads(1)
from mosaic_core.config import load_config
from recipes.train_alm import train_stage
from mosaic_alm.artifact import load_alm
from mosaic_alm.data import load_records
from eval.alm_qa import evaluate_closed, sample_per_qtype
ROOT = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
out, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config("configs/alm/stage2.yaml", [f"data.root={ROOT}", "data.qtypes=null", f"output_dir={out}", "name=x", "train.eval_batches=0", *overrides])
s = train_stage(cfg, quiet=True)
print("train", s["steps"], s["train_seconds"], s["first_loss"], s["last_loss"], flush=True)
model = load_alm(s["artifact"]); model.eval()
test = sample_per_qtype(load_records(ROOT, "test", None, "closed", 0, 0, None), 120, 0)
res = evaluate_closed(model, test)
print(json.dumps({q: round(v.get("exact_match", 0), 3) for q, v in res["per_qtype"].items()}))
print("overall", res["overall"], flush=True)
json.dump(res, open(f"{out}/qa.json", "w"))
