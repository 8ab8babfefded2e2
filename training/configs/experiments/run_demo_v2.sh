#!/usr/bin/env bash
# Issue #14, recipe v2: the shipped recipe's stages 0-5 with the position fixes from the start
# (demo-v2-stage1-lm.yaml says which and why); `run_demo_v2.sh 2` stops after stage 2. Resumable like
# training/reproduce_demo_model.sh: run it again after an interruption. Stage 0 and the albums are the
# shipped recipe's own (same folders, same seeds).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
EXP=training/configs/experiments
mkdir -p runs/demo-data
[ -f runs/demo-data/train/ground_truth.json ] || $PY -m data synth runs/demo-data/train --n 12000 --seed 1 --split train
LAST=${1:-5}
for seed_album in 2:train2 5:train3 6:train4; do  # stages 3-5's photos, as the shipped recipe's
  [ "$LAST" -ge 3 ] || break
  album=runs/demo-data/${seed_album#*:}
  [ -f $album/ground_truth.json ] || $PY -m data synth $album --n 12000 --seed ${seed_album%%:*} --split train
done
[ -f runs/demo-data/test/ground_truth.json ] || $PY -m data synth runs/demo-data/test --n 400 --seed 3 --split test
[ -f runs/demo-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml --resume
[ -f runs/demo-v2-stage0-wide/config.json ] || $PY -m training add-feature-layers runs/demo-stage0/final runs/demo-v2-stage0-wide --layer 0 --init-scale 10
[ -f runs/demo-v2-stage1/final/config.json ] || $PY -m training train --config $EXP/demo-v2-stage1-lm.yaml --resume
for stage in 2 3 4 5; do
  [ "$stage" -le "$LAST" ] || break
  [ -f runs/demo-v2-stage$stage/final/config.json ] || $PY -m training train --config $EXP/demo-v2-stage$stage-cafe.yaml --resume
done
echo "runs/demo-v2-stage$LAST/final written"
