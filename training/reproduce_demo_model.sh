#!/usr/bin/env bash
# Reproduces models/cafe-tiny-sampleworld from nothing, with this repository's trainer only (CPU, 2 cores;
# see the model card for the measured time). Each stage resumes from its last checkpoint if interrupted:
# just run the script again. Training photos are half plain, half drawn as other cameras would (--style mixed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
synth() {  # synth FOLDER ARGS...: write a sample-world album once
  local out=$1; shift
  [ -f "$out/ground_truth.json" ] || $PY -m data synth "$out" "$@"
}
synth runs/demo-data/train1 --n 12000 --seed 1 --split train --style mixed
synth runs/demo-data/train2 --n 12000 --seed 2 --split train --style mixed
synth runs/demo-data/train3 --n 12000 --seed 5 --split train --style mixed
synth runs/demo-data/test --n 400 --seed 3 --split test
[ -f runs/demo-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml --resume
for stage in 1-lm 2-cafe 3-cafe 4-cafe; do
  [ -f "runs/demo-stage${stage%%-*}/final/config.json" ] || $PY -m training train --config "training/configs/demo-stage$stage.yaml" --resume
done
rm -rf models/cafe-tiny-sampleworld.tmp
cp -r runs/demo-stage4/final models/cafe-tiny-sampleworld.tmp
rm -rf models/cafe-tiny-sampleworld.tmp/eval
rm -rf models/cafe-tiny-sampleworld
mv models/cafe-tiny-sampleworld.tmp models/cafe-tiny-sampleworld
echo "models/cafe-tiny-sampleworld written"
