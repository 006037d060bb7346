#!/usr/bin/env bash
# ALM training seeds 1 and 2 of the default recipe (results/alm_seeds_align/recipe.yaml = the default preset's ALM
# recipe) on the encoders of a default pipeline run whose pretraining read the unlabeled corpus
# (results/pipeline_corpus: a fresh clone at cbf8909), pretrained and random variants side by side; seed 0 is the
# pipeline's own run. Usage, in that clone: bash results/alm_seeds_corpus/run.sh [runs/pipeline]
set -euo pipefail
OUT=${1:-runs/pipeline}
DATA=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['data'])" "$OUT/alm_qa.json")
mapfile -t RECIPE < <(.venv/bin/python results/recipe_args.py results/alm_seeds_align/recipe.yaml)
for SEED in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/mosaic-alm alm-experiment --data "$DATA" \
    --encoder "$OUT/pretrain-audiomosaic/encoder" --seed $SEED --variants pretrained,random \
    --output-dir "$OUT/alm-seed$SEED" --out "$OUT/alm_qa_seed$SEED.json" --reuse \
    "${RECIPE[@]}" > "$OUT/alm-seed$SEED.log" 2>&1 &
done
wait
mkdir -p results/alm_seeds_corpus
cp "$OUT/alm_qa.json" results/alm_seeds_corpus/alm_qa_seed0.json
cp "$OUT/alm_qa_seed1.json" "$OUT/alm_qa_seed2.json" results/alm_seeds_corpus/
.venv/bin/mosaic-alm alm-experiment --seeds-summary results/alm_seeds_corpus/alm_qa_seed{0,1,2}.json \
  --out results/alm_seeds_corpus/summary.json
