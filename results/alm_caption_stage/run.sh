#!/usr/bin/env bash
# A caption stage after the default closed-QA stage (issue 23, item 2). Run from the folder of a finished default
# pipeline run (here a fresh clone at cbf8909: results/pipeline_corpus), so that runs/pipeline/... resolve.
# usage: bash run.sh OUT EXAMPLES [extra key=value overrides of the caption stage]
set -euo pipefail
OUT=${1:?out folder}; N=${2:?examples}; shift 2
M=${MOSAIC_ALM:-mosaic-alm}
ENC=runs/pipeline/pretrain-audiomosaic/encoder
common=(data.root="$PWD/data/embedded-full" output_dir="$OUT" seed=0 projector.kind=attentive train.lr=3e-4
        train.projector_lr=1e-4 train.copy_warmup=0 train.align_steps=0 train.examples="$N" train.max_steps=0 "$@")
[ -f "$OUT/pretrained/stage4/artifact/meta.json" ] || $M train-alm --config configs/alm/stage4.yaml name=pretrained audio.encoder=$ENC \
   train.init_from=runs/pipeline/alm/pretrained/stage3/artifact "${common[@]}"
[ -f "$OUT/no_audio/stage4/artifact/meta.json" ] || $M train-alm --config configs/alm/stage4.yaml name=no_audio \
   audio.enabled=false trainable.projector=false \
   train.init_from=runs/pipeline/alm/no_audio/stage3/artifact "${common[@]}"
$M eval-alm "$OUT/pretrained/stage4/artifact" --data data/embedded-full --out "$OUT/eval-alm" \
   --max-closed 120 --max-captions 20 --max-classify 20 \
   --no-audio-artifact "$OUT/no_audio/stage4/artifact" --retrieval-encoder $ENC
