#!/usr/bin/env bash
# The few-label evaluation of the six encoders of pretrain_runs.sh beside random init and MFCC: the fair linear
# read-out at 1, 5, 10, 20 labels a class (3 nested draws) and all labels, on every test split.
#   bash results/unlabeled_corpus/evaluate.sh DATA OUT
set -eu
DATA=${1:-data/embedded-full}
OUT=${2:-runs/unlabeled_corpus}
PY=${PY:-.venv/bin/python}
ENC="{"
for arm in labeled corpus; do for s in 0 1 2; do ENC="$ENC$arm-s$s: $OUT/$arm-s$s/encoder, "; done; done
ENC="${ENC}random: random}"
$PY -m recipes.eval_encoder --config configs/eval/encoder_embedded.yaml data_root="$DATA" run_dir="$OUT/eval" \
  "encoders=$ENC" probes=[linear] layer_sweep=false threads=2 > "$OUT/eval.log" 2>&1
