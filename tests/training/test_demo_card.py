"""training.demo_card: the shipped model's card carries the whole recipe, read from the configs."""

from __future__ import annotations

from training.config import load_config
from training.demo_card import HEADING, REPO, STAGES, add_recipe, recipe_markdown


def test_the_recipe_lists_every_stage_with_its_config_and_the_albums():
    text = recipe_markdown(3.5 * 3600)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "configs/demo-stage" in line]
    assert len(rows) == len(STAGES) == 6
    stage2 = load_config(REPO / "training/configs/demo-stage2-cafe.yaml")
    assert f"| {stage2.max_steps} x {stage2.batch_size} | {stage2.lr} ({stage2.vision_lr}) | {stage2.seed} |" in rows[2]
    assert "`runs/demo-data/test`: `--n 400 --seed 3 --split test`" in text and "3.5 h" in text


def test_adding_the_recipe_twice_keeps_one_section(tmp_path):
    (tmp_path / "README.md").write_text("# a card\n\nstage 4's own text\n")
    add_recipe(tmp_path, 100.0)
    card = add_recipe(tmp_path, 7200.0).read_text()
    assert card.count(HEADING) == 1 and "2.0 h" in card and card.startswith("# a card\n\nstage 4's own text\n")
