#!/usr/bin/env bash
# ALM training seeds 1 and 2 of the default recipe (results/alm_seeds_align/recipe.yaml = the default preset's ALM
# recipe) on the encoders of a default pipeline run whose pretraining read the unlabeled corpus
# (results/pipeline_corpus: a fresh clone at cbf8909), pretrained and random variants side by side; seed 0 is the
# pipeline's own run. Usage, in that clone: bash results/alm_seeds_corpus/run.sh [runs/pipeline]
set -euo pipefail
VARIANTS=pretrained,random DEST=results/alm_seeds_corpus exec bash "$(dirname "$0")/../alm_seeds_align/run.sh" "$@"
