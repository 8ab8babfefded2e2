#!/usr/bin/env bash
# Reproduces models/cafe-tiny-sampleworld from nothing, with this repository's trainer only (CPU, about 195 min on 2 idle cores).
# Each stage resumes from its last checkpoint if interrupted: just run the script again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -f runs/demo-data/train/ground_truth.json ] || $PY -m data synth runs/demo-data/train --n 12000 --seed 1 --split train
[ -f runs/demo-data/train2/ground_truth.json ] || $PY -m data synth runs/demo-data/train2 --n 12000 --seed 2 --split train
[ -f runs/demo-data/train3/ground_truth.json ] || $PY -m data synth runs/demo-data/train3 --n 12000 --seed 5 --split train
[ -f runs/demo-data/train4/ground_truth.json ] || $PY -m data synth runs/demo-data/train4 --n 12000 --seed 6 --split train
[ -f runs/demo-data/test/ground_truth.json ] || $PY -m data synth runs/demo-data/test --n 400 --seed 3 --split test
[ -f runs/demo-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml --resume
[ -f runs/demo-stage1/final/config.json ] || $PY -m training train --config training/configs/demo-stage1-lm.yaml --resume
[ -f runs/demo-stage2/final/config.json ] || $PY -m training train --config training/configs/demo-stage2-cafe.yaml --resume
[ -f runs/demo-stage3/final/config.json ] || $PY -m training train --config training/configs/demo-stage3-cafe.yaml --resume
[ -f runs/demo-stage4/final/config.json ] || $PY -m training train --config training/configs/demo-stage4-cafe.yaml --resume
[ -f runs/demo-stage5/final/config.json ] || $PY -m training train --config training/configs/demo-stage5-cafe.yaml --resume
rm -rf models/cafe-tiny-sampleworld.tmp
cp -r runs/demo-stage5/final models/cafe-tiny-sampleworld.tmp
rm -rf models/cafe-tiny-sampleworld.tmp/eval
rm -rf models/cafe-tiny-sampleworld
mv models/cafe-tiny-sampleworld.tmp models/cafe-tiny-sampleworld
echo "models/cafe-tiny-sampleworld written"
