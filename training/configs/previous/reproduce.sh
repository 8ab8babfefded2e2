#!/usr/bin/env bash
# The previous demo model's recipe (shipped until the recipe of training/reproduce_demo_model.sh replaced it),
# kept to reproduce the README's comparison row: runs/previous-stage5/final, from nothing, with this
# repository's trainer only (CPU, about 195 min on 2 idle cores).
# Each stage resumes from its last checkpoint if interrupted: just run the script again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
[ -f runs/previous-data/train/ground_truth.json ] || $PY -m data synth runs/previous-data/train --n 12000 --seed 1 --split train
[ -f runs/previous-data/train2/ground_truth.json ] || $PY -m data synth runs/previous-data/train2 --n 12000 --seed 2 --split train
[ -f runs/previous-data/train3/ground_truth.json ] || $PY -m data synth runs/previous-data/train3 --n 12000 --seed 5 --split train
[ -f runs/previous-data/train4/ground_truth.json ] || $PY -m data synth runs/previous-data/train4 --n 12000 --seed 6 --split train
[ -f runs/previous-data/test/ground_truth.json ] || $PY -m data synth runs/previous-data/test --n 400 --seed 3 --split test
[ -f runs/previous-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/previous/demo-stage0-vision.yaml --resume
[ -f runs/previous-stage1/final/config.json ] || $PY -m training train --config training/configs/previous/demo-stage1-lm.yaml --resume
[ -f runs/previous-stage2/final/config.json ] || $PY -m training train --config training/configs/previous/demo-stage2-cafe.yaml --resume
[ -f runs/previous-stage3/final/config.json ] || $PY -m training train --config training/configs/previous/demo-stage3-cafe.yaml --resume
[ -f runs/previous-stage4/final/config.json ] || $PY -m training train --config training/configs/previous/demo-stage4-cafe.yaml --resume
[ -f runs/previous-stage5/final/config.json ] || $PY -m training train --config training/configs/previous/demo-stage5-cafe.yaml --resume
echo "the previous demo model is in runs/previous-stage5/final"
