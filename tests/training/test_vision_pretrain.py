"""Vision-tower pretraining (python -m training pretrain-vision): the tower learns, the rest is untouched,
the output loads with plain transformers, and a resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import shutil

import pytest

from cafe_core.tiny import save_tiny
from training.config import ConfigError, load_config
from data.world import PhotoSpec, WorldObject
from training.vision_pretrain import LABEL_INDEX, LABEL_SETS, LABELS, VisionPretrainConfig, photo_labels, pretrain_vision

from .conftest import folder_weights, max_abs_diff, read_metrics, run_cli


def _cfg(data, out_dir, **overrides) -> VisionPretrainConfig:
    values = {"base_model": "tiny:llava", "data": str(data), "out_dir": str(out_dir), "image_max_side": 96,
              "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "log_every": 1, "save_every": 0, "threads": 2,
              **overrides}
    return load_config(None, [f"{k}={v}" for k, v in values.items()], cls=VisionPretrainConfig)


def _two_object_photo() -> PhotoSpec:
    from datetime import datetime

    objects = (WorldObject("circle", "red", "small", "left"), WorldObject("star", "blue", "large", "right"))
    return PhotoSpec("p", objects, "gray", datetime(2020, 1, 1), 300, 200)


def test_photo_labels_name_each_object_its_position_and_the_background():
    y = photo_labels(_two_object_photo())
    on = {LABELS[i] for i in y.nonzero()[0]}
    assert on == {"red circle", "red circle@left", "blue star", "blue star@right", "bg:gray"}
    assert y[LABEL_INDEX["red circle@right"]] == 0


def test_attribute_labels_name_colors_shapes_and_sizes_apart():
    names = LABEL_SETS["attributes"]
    y = photo_labels(_two_object_photo(), "attributes")
    on = {names[i] for i in y.nonzero()[0]}
    assert on == {"color:red", "color:blue", "shape:circle", "shape:star", "red@left", "circle@left", "small@left",
                  "blue@right", "star@right", "large@right", "bg:gray"}
    assert not any(" " in t for t in names)  # no tag for a (color, shape) pair: nothing to memorise one by


def test_pretrain_trains_the_tower_only_and_saves_a_loadable_model(train_data, eval_data, tmp_path):
    from transformers import AutoModelForImageTextToText

    final = pretrain_vision(_cfg(train_data, tmp_path / "run", steps=40, eval_data=str(eval_data)))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)

    built = folder_weights(save_tiny(tmp_path / "built", "llava", seed=0))
    trained = folder_weights(final)
    tower = [k for k in built if "vision_tower" in k]
    rest = [k for k in built if "vision_tower" not in k]
    assert tower and rest
    # The encoder layers feed the LVLM and must have moved; SigLIP's pooling head is unused by LLaVA.
    assert max_abs_diff({k: built[k] for k in tower if ".encoder." in k}, trained) > 1e-3
    assert max_abs_diff({k: built[k] for k in rest}, trained) == 0.0

    report = json.loads((final / "vision_pretrain.json").read_text())
    assert report["eval"]["photos"] == 8
    assert 0.0 <= report["eval"]["object_set_exact"] <= 1.0
    assert report["train"]["background_exact"] > 0.5  # the easiest tag is learned within 40 steps
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000


def test_resume_after_an_interruption_matches_an_uninterrupted_run(train_data, tmp_path, caplog):
    straight = pretrain_vision(_cfg(train_data, tmp_path / "straight", steps=12))
    # Same run with a checkpoint at step 6; then the output is lost, as after a kill at step 6..12.
    interrupted = pretrain_vision(_cfg(train_data, tmp_path / "resumed", steps=12, save_every=6))
    shutil.rmtree(interrupted)
    with caplog.at_level("INFO", logger="training.vision_pretrain"):
        resumed = pretrain_vision(_cfg(train_data, tmp_path / "resumed", steps=12, save_every=6), resume=True)
    assert "resumed pretrain-vision from step 6" in caplog.text
    assert max_abs_diff(folder_weights(straight), folder_weights(resumed)) == 0.0
    # Steps 7..12 of the interrupted run are logged once, by the resumed run.
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 13))


def test_bad_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no training data"):
        VisionPretrainConfig().validate()
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["data=x", "stepz=3"], cls=VisionPretrainConfig)
    proc = run_cli(["pretrain-vision", "--set", f"data={tmp_path / 'nowhere'}", "--set", f"out_dir={tmp_path / 'o'}"])
    assert proc.returncode == 2
    assert "ground_truth.json not found" in proc.stderr
