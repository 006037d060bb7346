#!/bin/bash
# Probe accuracy against pretraining minutes for the default tiny recipe (configs/pretrain/tiny.yaml): the
# contrastive and MAE pretrainings side by side (one thread each, every 100-step checkpoint kept), then the fair
# linear read-out of every checkpoint (step 0 = the random initialisation). Usage: bash results/probe_curve/run.sh [DATA]
cd "$(dirname "$0")/../.."
D=${1:-data/embedded-full}
export OMP_NUM_THREADS=1
for obj in contrastive mae; do
  .venv/bin/mosaic-alm pretrain --config configs/pretrain/tiny.yaml data.root=$D run_dir=runs/curve/$obj \
    train.keep_last=0 objective=$obj train.progress=false > runs/curve_$obj.log 2>&1 &
done
wait
for obj in contrastive mae; do
  .venv/bin/python bench/probe_curve.py runs/curve/$obj --data $D --out results/probe_curve/probe_curve_$obj.json &
done
wait
