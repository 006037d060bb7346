#!/usr/bin/env bash
# The ALM ablation of the default pipeline with the default preset's ALM recipe (alignment + copy warm-up, read from
# recipes.pipeline.PRESETS so it cannot drift), training seeds 1 and 2 side by side; seed 0 is the pipeline's own run.
# Usage: bash results/alm_seeds_align/run.sh PIPELINE_OUT (e.g. runs/pipeline)
set -euo pipefail
OUT=${1:-runs/pipeline}
DATA=$(python3 -c "import json;print(json.load(open('$OUT/alm_qa.json'))['data'])")
read -r -a RECIPE <<< "$(.venv/bin/python -c "from recipes.pipeline import PRESETS; print(' '.join(PRESETS['default']['alm_recipe']))")"
EXAMPLES=$(.venv/bin/python -c "from recipes.pipeline import PRESETS; print(PRESETS['default']['alm_examples'])")
for SEED in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/mosaic-alm alm-experiment --data "$DATA" --encoder "$OUT/pretrain-audiomosaic/encoder" \
    --examples "$EXAMPLES" --max-test 120 --seed $SEED --variants pretrained,random,no_audio \
    --output-dir "$OUT/alm-seed$SEED" --out "$OUT/alm_qa_seed$SEED.json" --reuse \
    "${RECIPE[@]}" > "$OUT/alm-seed$SEED.log" 2>&1 &
done
wait
mkdir -p results/alm_seeds_align
cp "$OUT/alm_qa.json" results/alm_seeds_align/alm_qa_seed0.json
cp "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" results/alm_seeds_align/
.venv/bin/mosaic-alm alm-experiment --seeds-summary "$OUT/alm_qa.json" "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" \
  --out results/alm_seeds_align/summary.json
