#!/usr/bin/env bash
# Issue #14, recipe v2 (not shipped): the shipped recipe's stages 0-2 with the position fixes from the start
# (demo-v2-stage1-lm.yaml says which, why, and what came of it). Resumable like
# training/reproduce_demo_model.sh: run it again after an interruption. Stage 0 and the albums are the
# shipped recipe's own (same folders, same seeds).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
EXP=training/configs/experiments
mkdir -p runs/demo-data
[ -f runs/demo-data/train/ground_truth.json ] || $PY -m data synth runs/demo-data/train --n 12000 --seed 1 --split train
[ -f runs/demo-data/test/ground_truth.json ] || $PY -m data synth runs/demo-data/test --n 400 --seed 3 --split test
[ -f runs/demo-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml --resume
[ -f runs/demo-v2-stage0-wide/config.json ] || $PY -m training add-feature-layers runs/demo-stage0/final runs/demo-v2-stage0-wide --layer 0 --init-scale 10
[ -f runs/demo-v2-stage1/final/config.json ] || $PY -m training train --config $EXP/demo-v2-stage1-lm.yaml --resume
[ -f runs/demo-v2-stage2/final/config.json ] || $PY -m training train --config $EXP/demo-v2-stage2-cafe.yaml --resume
echo "runs/demo-v2-stage2/final written"
