"""The shipped demo model's card gets the whole recipe: every stage's config, data, budget and seed, the
sample-world albums it was trained on, and the measured time (training/reproduce_demo_model.sh calls this
after copying the last stage; each stage's own card only knows that stage).

    python -m training.demo_card models/cafe-tiny-sampleworld --seconds 17400
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .config import TrainConfig, load_config
from .vision_pretrain import VisionPretrainConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "training/reproduce_demo_model.sh"
STAGES = ("demo-stage0-vision", "demo-stage1-lm", "demo-stage2-cafe", "demo-stage3-cafe", "demo-stage4-cafe",
          "demo-stage5-cafe")
HEADING = "## How this model was made"


def recipe_markdown(seconds: float | None) -> str:
    """The recipe section: albums (from the script's synth lines), then one row per stage."""
    script = (REPO / SCRIPT).read_text()
    albums = re.findall(r"^synth (\S+) (.+)$", script, flags=re.MULTILINE)
    lines = [HEADING, "", f"`make demo-model` (= `bash {SCRIPT}`), from nothing, with this repository's trainer "
             "only; rerun it after an interruption and each stage resumes from its last checkpoint."
             + (f" Measured: {seconds / 3600:.1f} h on a 2-core CPU." if seconds else ""), "",
             "Sample-world albums (`python -m data synth FOLDER ...`):", ""]
    lines += [f"- `{folder}`: `{args}`" for folder, args in albums]
    lines += ["", "| stage | config | from | data | steps x batch | lr (vision) | seed |", "|---|---|---|---|---|---|---|"]
    for i, name in enumerate(STAGES):
        path = REPO / "training" / "configs" / f"{name}.yaml"
        if i == 0:
            c = load_config(path, cls=VisionPretrainConfig)
            lines.append(f"| {i}: vision tower ({c.labels}) | `{path.relative_to(REPO)}` | `{c.base_model}` | "
                         f"`{c.data}` | {c.steps} x {c.batch_size} | {c.lr} | {c.seed} |")
            continue
        c = load_config(path, cls=TrainConfig)
        lines.append(f"| {i}: {c.loss} | `{path.relative_to(REPO)}` | `{c.base_model}` | `{c.data}` | "
                     f"{c.max_steps} x {c.batch_size} | {c.lr} ({c.vision_lr}) | {c.seed} |")
    lines += ["", "Then `benchmarks/calibrate.py --write` measures the app's thresholds for these weights "
              "(`app_calibration.json`, on calibration albums of their own: test split, seeds 300-302).", ""]
    return "\n".join(lines)


def add_recipe(folder: str | Path, seconds: float | None = None) -> Path:
    """Put the recipe section in ``folder``/README.md (replacing an earlier one)."""
    card = Path(folder) / "README.md"
    text = card.read_text() if card.exists() else ""
    if HEADING in text:
        text = text[: text.index(HEADING)].rstrip() + "\n"
    card.write_text(text.rstrip() + "\n\n" + recipe_markdown(seconds))
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--seconds", type=float, help="measured wall-clock time of the whole recipe")
    args = p.parse_args(argv)
    print(add_recipe(args.folder, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
