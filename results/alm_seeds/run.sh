#!/usr/bin/env bash
# The ALM ablation of the default pipeline (same recipe, encoder, data and test-question count: recipe.yaml, what
# alm_qa_seed{0,1,2}.json recorded) with training seeds 1 and 2; seed 0 is the pipeline's own run.
# Usage: bash results/alm_seeds/run.sh PIPELINE_OUT (e.g. runs/pipeline)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/pipeline}
RECIPE_FILE=results/alm_seeds/recipe.yaml
DATA=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['data'])" "$OUT/alm_qa.json")
mapfile -t RECIPE < <(.venv/bin/python results/recipe_args.py "$RECIPE_FILE")
for SEED in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/mosaic-alm alm-experiment --data "$DATA" --encoder "$OUT/pretrain-audiomosaic/encoder" \
    --seed $SEED --variants pretrained,random,no_audio \
    --output-dir "$OUT/alm-seed$SEED" --out "$OUT/alm_qa_seed$SEED.json" --reuse \
    "${RECIPE[@]}" > "$OUT/alm-seed$SEED.log" 2>&1 &
done
wait
.venv/bin/mosaic-alm alm-experiment --seeds-summary "$OUT/alm_qa.json" "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" \
  --out results/alm_seeds/summary.json
