#!/usr/bin/env bash
# The ALM ablation of a default pipeline run with the ALM recipe of recipe.yaml (alignment + copy warm-up, balanced
# question types, 1,500 stage-3 examples: what alm_qa_seed{0,1,2}.json recorded), training seeds 1 and 2 side by side;
# seed 0 is the pipeline's own run. Usage: bash results/alm_seeds_align/run.sh PIPELINE_OUT (e.g. runs/pipeline)
# VARIANTS (default pretrained,random,no_audio) and DEST (default results/alm_seeds_align) choose the variants
# trained and the folder the three seeds' JSONs and summary.json are copied to (results/alm_seeds_corpus/run.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/pipeline}
VARIANTS=${VARIANTS:-pretrained,random,no_audio}
DEST=${DEST:-results/alm_seeds_align}
RECIPE_FILE=results/alm_seeds_align/recipe.yaml
DATA=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['data'])" "$OUT/alm_qa.json")
mapfile -t RECIPE < <(.venv/bin/python results/recipe_args.py "$RECIPE_FILE")
for SEED in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/mosaic-alm alm-experiment --data "$DATA" --encoder "$OUT/pretrain-audiomosaic/encoder" \
    --seed $SEED --variants "$VARIANTS" \
    --output-dir "$OUT/alm-seed$SEED" --out "$OUT/alm_qa_seed$SEED.json" --reuse \
    "${RECIPE[@]}" > "$OUT/alm-seed$SEED.log" 2>&1 &
done
wait
mkdir -p "$DEST"
cp "$OUT/alm_qa.json" "$DEST/alm_qa_seed0.json"
cp "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" "$DEST/"
.venv/bin/mosaic-alm alm-experiment --seeds-summary "$DEST"/alm_qa_seed{0,1,2}.json --out "$DEST/summary.json"
