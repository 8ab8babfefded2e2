"""Per-model settings (app.calibration) and the words a model knows (cafe_core.vocab), as the app reads them:
applied only to the model they were measured on, and never a crash for a broken file."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from app.calibration import CALIBRATION_FILE, model_settings
from app.config import AnswerConfig, SearchConfig
from cafe_core import CafeModel
from cafe_core.vocab import VOCAB_FILE


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """The tiny model in a folder of its own (this test writes files into it)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return CafeModel.load(str(folder), device="cpu", dtype="float32")


def write_calibration(model, fingerprint=None, **sections):
    path = f"{model.name}/{CALIBRATION_FILE}"
    with open(path, "w") as f:
        json.dump({"fingerprint": fingerprint or model.fingerprint, **sections}, f)


def test_calibrated_settings_apply_to_their_own_model(model_copy):
    write_calibration(model_copy, search={"min_text_score": 0.31, "composed_text_weight": 2},
                      answer={"min_yes": 0.7, "rerank_weight": 0.02, "no_such_setting": 1})
    s = model_settings(model_copy)
    assert (s.search.min_text_score, s.search.composed_text_weight) == (0.31, 2.0)  # an int is taken for a float
    assert (s.answer.min_yes, s.answer.rerank_weight) == (0.7, 0.02)
    assert s.answer.min_score == AnswerConfig().min_score  # not in the file: the default
    assert model_settings(model_copy, calibrate=False).answer == AnswerConfig()


def test_another_models_calibration_is_ignored(model_copy, caplog):
    write_calibration(model_copy, fingerprint="cafe-0000000000000000", answer={"min_yes": 0.7})
    with caplog.at_level(logging.WARNING):
        s = model_settings(model_copy)
    assert s.answer == AnswerConfig() and s.search == SearchConfig()
    assert "not on this one" in caplog.text


@pytest.mark.parametrize("content, kept", [
    ("{not json", False),
    ("[1, 2]", False),
    (None, True),  # valid, with one value of the wrong type: that value is ignored, the others apply
])
def test_a_broken_calibration_file_falls_back_to_the_defaults(model_copy, caplog, content, kept):
    if content is None:
        write_calibration(model_copy, answer={"min_yes": "0.7", "rerank_weight": 0.02})
    else:
        (model_copy.name and open(f"{model_copy.name}/{CALIBRATION_FILE}", "w")).write(content)
    with caplog.at_level(logging.WARNING):
        s = model_settings(model_copy)
    assert s.answer.min_yes == AnswerConfig().min_yes
    assert s.answer.rerank_weight == (0.02 if kept else AnswerConfig().rerank_weight)
    assert "ignoring" in caplog.text


def test_training_vocabulary_is_read_and_a_broken_one_means_open_vocabulary(model_copy, caplog):
    path = f"{model_copy.name}/{VOCAB_FILE}"
    with open(path, "w") as f:
        json.dump({"version": 1, "texts": 2, "words": {"red": 3, "circle": 2}}, f)
    vocab = model_settings(model_copy).vocab
    assert vocab.unknown("a red circle next to a cat") == ["next", "cat"]
    with open(path, "w") as f:
        f.write('{"words": ["red"]}')
    with caplog.at_level(logging.WARNING):
        assert model_settings(model_copy).vocab is None
    assert "not a training vocabulary file" in caplog.text
