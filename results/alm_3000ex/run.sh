#!/bin/bash
# The default ALM recipe of the time (projector + LoRA on every closed type, lr 3e-4 / projector 1e-3, then 160
# examples of every kind) with three times the stage-3 budget: 3,000 examples (recipe.yaml: what alm_qa.json recorded).
# Pretrained variant, seed 0, on a default pipeline run's contrastive encoder.
# Usage: bash results/alm_3000ex/run.sh [PIPELINE_RUN] [DATA]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/pipeline}
D=${2:-data/embedded-full}
export OMP_NUM_THREADS=1
mapfile -t RECIPE < <(.venv/bin/python results/recipe_args.py results/alm_3000ex/recipe.yaml)
.venv/bin/mosaic-alm alm-experiment --data "$D" --encoder "$RUN/pretrain-audiomosaic/encoder" \
  --seed 0 --variants pretrained --output-dir runs/alm3000 \
  --out results/alm_3000ex/alm_qa.json "${RECIPE[@]}"
