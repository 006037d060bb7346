#!/bin/bash
# Fine-tuning table of a pipeline run: the embedded fine-tuning recipes (configs/finetune/embedded_*.yaml: LP-FT, no
# batch augmentation) on each task from the run's contrastive encoder, its MAE baseline and random init, two at a
# time on one thread each; then summary.py puts them next to the run's frozen probes (eval-encoder).
#   bash results/finetune_lpft/run.sh [RUN=runs/pipeline] [DATA=data/embedded-full] [SEEDS="0"] \
#        [ENCODERS="audiomosaic mae random"] [OUT=results/finetune_lpft]
cd "$(dirname "$0")/../.."
RUN=${1:-runs/pipeline}; D=${2:-data/embedded-full}; SEEDS=${3:-0}; ENCODERS=${4:-audiomosaic mae random}
OUT=${5:-results/finetune_lpft}
declare -A ENCODER=([audiomosaic]=$RUN/pretrain-audiomosaic/encoder [mae]=$RUN/pretrain-mae/encoder [random]=random)
export OMP_NUM_THREADS=1
mkdir -p "$RUN/finetune"
jobs=()
for seed in $SEEDS; do for task in keywords instruments environment; do
  for enc in $ENCODERS; do
    jobs+=("$task $enc ${ENCODER[$enc]} $seed")
  done
done; done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c '
  out='"$RUN"'/finetune/$0-$1-seed$3
  [ -f $out/finetune.json ] && exit 0
  .venv/bin/mosaic-alm finetune --config configs/finetune/embedded_$0.yaml task.data_root='"$D"' model.encoder=$2 \
     run_dir=$out seed=$3 threads=1 tensorboard=false > $out.log 2>&1 && echo "done $out" || echo "FAILED $out (see $out.log)"'
mkdir -p "$OUT"
.venv/bin/python results/finetune_lpft/summary.py "$RUN" --json "$OUT/summary.json" > "$OUT/summary.md"
cat "$OUT/summary.md"
