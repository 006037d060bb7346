#!/usr/bin/env bash
# The corpus against today's recipe at the same steps and batch (150 x 256), 3 pretraining seeds each: the
# contrastive tiny encoder pretrained on the labelled tasks' train splits ("labeled", configs/pretrain/tiny.yaml as
# before this experiment) or on the unlabeled corpus ("corpus", data.shards = DATA/unlabeled). Two runs at a time,
# one torch thread each (as the pipeline runs its pretrainings).
#   bash results/unlabeled_corpus/pretrain_runs.sh DATA OUT   (DATA: data/embedded-full with its corpus built)
set -u
DATA=${1:-data/embedded-full}
OUT=${2:-runs/unlabeled_corpus}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
run() {  # name seed extra-overrides...
  local name=$1 seed=$2; shift 2
  local dir="$OUT/$name-s$seed"
  [ -f "$dir/encoder/config.json" ] && return 0
  /usr/bin/time -f "%e s wall, %U s user" -o "$dir.time" \
    $PY -m recipes.pretrain --config configs/pretrain/tiny.yaml data.root="$DATA" run_dir="$dir" seed="$seed" \
      train.max_steps=150 train.progress=false "$@" > "$dir.log" 2>&1
}
for seed in 0 1 2; do
  run labeled "$seed" data.shards=null &
  run corpus "$seed" data.shards="$DATA/unlabeled" &
  wait
done
