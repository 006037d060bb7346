#!/usr/bin/env bash
# The same comparison at 4x the default budget (600 steps x 256, the long preset's pretraining), one seed each: the
# labelled splits read 26 times, the 38,400-clip corpus read 4 times. Both runs side by side, one thread each, then
# the few-label evaluation of both beside random init and MFCC.
#   bash results/unlabeled_corpus/long_runs.sh DATA OUT
set -u
DATA=${1:-data/embedded-full}
OUT=${2:-runs/unlabeled_corpus_long}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
run() {  # name extra-overrides...
  local name=$1; shift
  local dir="$OUT/$name"
  [ -f "$dir/encoder/config.json" ] && return 0
  /usr/bin/time -f "%e s wall, %U s user" -o "$dir.time" \
    $PY -m recipes.pretrain --config configs/pretrain/tiny.yaml data.root="$DATA" run_dir="$dir" seed=0 \
      train.max_steps=600 train.progress=false "$@" > "$dir.log" 2>&1
}
run labeled data.shards=null &
run corpus data.shards="$DATA/unlabeled" &
wait
$PY -m recipes.eval_encoder --config configs/eval/encoder_embedded.yaml data_root="$DATA" run_dir="$OUT/eval" \
  "encoders={labeled: $OUT/labeled/encoder, corpus: $OUT/corpus/encoder, random: random}" probes=[linear] \
  layer_sweep=false threads=2 > "$OUT/eval.log" 2>&1
