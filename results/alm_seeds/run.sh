#!/usr/bin/env bash
# The ALM ablation of the default pipeline (same recipe, encoder, data and test-question count) with training seeds
# 1 and 2; seed 0 is the pipeline's own run. Usage: bash results/alm_seeds/run.sh PIPELINE_OUT (e.g. runs/pipeline)
set -euo pipefail
OUT=${1:-runs/pipeline}
DATA=$(python3 -c "import json;print(json.load(open('$OUT/alm_qa.json'))['data'])")
for SEED in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/mosaic-alm alm-experiment --data "$DATA" --encoder "$OUT/pretrain-audiomosaic/encoder" \
    --examples 0,0,1000,160 --max-test 120 --seed $SEED --variants pretrained,random,no_audio \
    --output-dir "$OUT/alm-seed$SEED" --out "$OUT/alm_qa_seed$SEED.json" --reuse \
    train.lr=3e-4 train.projector_lr=1e-3 > "$OUT/alm-seed$SEED.log" 2>&1 &
done
wait
.venv/bin/mosaic-alm alm-experiment --seeds-summary "$OUT/alm_qa.json" "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" \
  --out results/alm_seeds/summary.json
