#!/bin/bash
# Probe accuracy against pretraining minutes: the default tiny contrastive recipe (configs/pretrain/tiny.yaml, batch
# 256 x 150 steps, a checkpoint every 25 steps) next to the previous default (batch 64 x 600, every 100 steps: the
# same 38,400 clips), side by side on one thread each, then the fair linear read-out of every checkpoint (step 0 =
# the random initialisation). Usage: bash results/probe_curve/run.sh [DATA]
# (probe_curve_contrastive.json / probe_curve_mae.json are an earlier run of the 64 x 600 recipe, contrastive and
# MAE, on another machine; probe_curve_b256_vs_b64.json is this script's, in the plain form it had before it wrote
# through eval.results.write_results.)
cd "$(dirname "$0")/../.."
D=${1:-data/embedded-full}
export OMP_NUM_THREADS=1
declare -A RECIPE=([b256]="train.ckpt_every=25" [b64]="train.batch_size=64 train.max_steps=600 optim.warmup_steps=20 train.ckpt_every=100")
for name in b256 b64; do
  .venv/bin/mosaic-alm pretrain --config configs/pretrain/tiny.yaml data.root=$D run_dir=runs/curve/$name \
    train.keep_last=0 ${RECIPE[$name]} train.progress=false > runs/curve_$name.log 2>&1 &
done
wait
for name in b256 b64; do
  .venv/bin/python bench/probe_curve.py runs/curve/$name --data $D --out runs/curve/probe_curve_$name.json &
done
wait
.venv/bin/python - "$D" "${RECIPE[b256]}" "${RECIPE[b64]}" <<'EOF'
import json, sys
from eval.results import write_results
runs = {}
for name in ("b256", "b64"):
    runs.update(json.load(open(f"runs/curve/probe_curve_{name}.json"))["runs"])
config = {"data": sys.argv[1], "config_file": "configs/pretrain/tiny.yaml", "script": "results/probe_curve/run.sh",
          "overrides": {"b256": sys.argv[2].split(), "b64": sys.argv[3].split()}}
write_results("results/probe_curve", "probe_curve_b256_vs_b64", {"runs": runs}, config, seed=None)
EOF
