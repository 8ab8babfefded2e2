#!/usr/bin/env bash
# Reproduces models/cafe-tiny-sampleworld from nothing, with this repository's trainer only (CPU, 2 cores;
# see the model card for the measured time). Each stage resumes from its last checkpoint if interrupted:
# just run the script again. (training/configs/experiments/ holds stage-6 runs that were tried and not shipped.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# Wall-clock of the whole recipe, kept across reruns (an interrupted run's time is counted until it stopped).
START_FILE=runs/demo-data/.started
mkdir -p runs/demo-data
[ -f "$START_FILE" ] || date +%s > "$START_FILE"
synth() {  # synth FOLDER ARGS...: write a sample-world album once
  local out=$1; shift
  [ -f "$out/ground_truth.json" ] || $PY -m data synth "$out" "$@"
}
synth runs/demo-data/train --n 12000 --seed 1 --split train
synth runs/demo-data/train2 --n 12000 --seed 2 --split train
synth runs/demo-data/train3 --n 12000 --seed 5 --split train
synth runs/demo-data/train4 --n 12000 --seed 6 --split train
synth runs/demo-data/test --n 400 --seed 3 --split test
[ -f runs/demo-stage0/final/config.json ] || $PY -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml --resume
for stage in 1-lm 2-cafe 3-cafe 4-cafe 5-cafe; do
  [ -f "runs/demo-stage${stage%%-*}/final/config.json" ] || $PY -m training train --config "training/configs/demo-stage$stage.yaml" --resume
done
# The model folder is assembled aside (weights, the app's calibration for them, the card with the whole
# recipe), then swapped in: an interruption never leaves a half-written shipped model.
OUT=models/cafe-tiny-sampleworld
rm -rf "$OUT.tmp"
cp -r runs/demo-stage5/final "$OUT.tmp"
rm -rf "$OUT.tmp/eval"
$PY benchmarks/calibrate.py --model "$OUT.tmp" --work runs/demo-data/calibration --write > runs/demo-data/calibration.json
$PY -m training.demo_card "$OUT.tmp" --seconds $(( $(date +%s) - $(cat "$START_FILE") ))
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT written"
