#!/usr/bin/env bash
# The release-normalisation measurement, from a fresh checkout, run from the repository root:
#   bash results/release_normalisation/run.sh
# 1. the embedded benchmark (full profile: what `mosaic-alm pipeline` uses), 2. the default tiny contrastive
# pretraining (configs/pretrain/tiny.yaml: 150 steps x batch 256, seed 0, bf16 where native), 3. the measurement.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/embedded-full}
RUN=${RUN:-runs/normexp/pretrain}
.venv/bin/mosaic-alm build-data --profile full --root "$DATA"
.venv/bin/mosaic-alm pretrain --config configs/pretrain/tiny.yaml data.root="$DATA" run_dir="$RUN" seed=0 \
    objective=contrastive train.progress=false
.venv/bin/python results/release_normalisation/measure.py "$RUN/encoder" "$DATA" --seeds 0,1,2 --random-control \
    --out results/release_normalisation/results.json
