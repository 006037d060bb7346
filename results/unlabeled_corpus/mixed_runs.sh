#!/usr/bin/env bash
# The third arm: the corpus and the labelled train clips' audio (no labels) read together, 150 x 256, seeds 0-2,
# one at a time, one torch thread (as pretrain_runs.sh), then their few-label read-out (as evaluate.sh).
#   .venv/bin/python results/unlabeled_corpus/labeled_audio_shards.py DATA    (once: DATA/unlabeled_train)
#   bash results/unlabeled_corpus/mixed_runs.sh DATA OUT
set -u
DATA=${1:-data/embedded-full}
OUT=${2:-runs/unlabeled_corpus}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
for seed in 0 1 2; do
  dir="$OUT/mixed-s$seed"
  [ -f "$dir/encoder/config.json" ] && continue
  OMP_NUM_THREADS=1 /usr/bin/time -f "%e s wall, %U s user" -o "$dir.time" \
    $PY -m recipes.pretrain --config configs/pretrain/tiny.yaml data.root="$DATA" run_dir="$dir" seed="$seed" \
      train.max_steps=150 train.progress=false train.threads=1 "data.shards=$DATA/unlabeled*/shard-*.tar" > "$dir.log" 2>&1
done
$PY -m recipes.eval_encoder --config configs/eval/encoder_embedded.yaml data_root="$DATA" run_dir="$OUT/eval-mixed" \
  "encoders={mixed-s0: $OUT/mixed-s0/encoder, mixed-s1: $OUT/mixed-s1/encoder, mixed-s2: $OUT/mixed-s2/encoder}" \
  probes=[linear] layer_sweep=false threads=1 > "$OUT/eval-mixed.log" 2>&1
