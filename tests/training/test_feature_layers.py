"""training/feature_layers.py: widening a LLaVA projector to more vision layers keeps the model's answers and
embeddings exactly (zero weights), writes a folder that loads as the same transformers class, and refuses
layers it cannot add."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.__main__ import main
from training.config import ConfigError
from training.feature_layers import add_feature_layers


def test_cli_widens_the_projector_and_changes_nothing_the_model_does(tiny_base, tmp_path, capsys):
    from cafe_core import CafeModel

    out = tmp_path / "wide"
    assert main(["add-feature-layers", str(tiny_base), str(out), "--layer", "0", "--layer", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_layer"] == [-1, 0, 1] and config["architectures"] == ["LlavaForConditionalGeneration"]
    before, after = CafeModel.load(tiny_base, device="cpu"), CafeModel.load(out, device="cpu")
    width = before.model.config.vision_config.hidden_size
    assert after.model.model.multi_modal_projector.linear_1.in_features == 3 * width
    images = [Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 96), (30, 30, 200))]
    assert np.abs(before.embed_images(images) - after.embed_images(images)).max() < 1e-6
    assert np.abs(before.embed_texts(["a red circle"]) - after.embed_texts(["a red circle"])).max() < 1e-6
    assert before.generate("What is on the left?", images[:1], max_new_tokens=4) == \
        after.generate("What is on the left?", images[:1], max_new_tokens=4)


def test_init_scale_draws_the_new_weights_at_that_fraction_of_the_old_spread(tiny_base):
    from cafe_core.loading import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_base), "cpu", "float32")
    old = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    add_feature_layers(model, [0], init_scale=2.0)
    new = model.model.multi_modal_projector.linear_1.weight.detach()
    assert (new[:, :old.shape[1]] == old).all()
    assert new[:, old.shape[1]:].std().item() == pytest.approx(2.0 * old.std().item(), rel=0.1)


def test_refuses_layers_it_cannot_add(tiny_base, tmp_path, capsys):
    from cafe_core.loading import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_base), "cpu", "float32")
    last = model.config.vision_config.num_hidden_layers  # the same hidden state as -1
    for layers in ([-1], [last], [0, 0]):
        with pytest.raises(ConfigError, match="already read"):
            add_feature_layers(model, layers)
    with pytest.raises(ConfigError, match="hidden states"):
        add_feature_layers(model, [99])
    assert main(["add-feature-layers", "tiny:llava-onevision", str(tmp_path / "x"), "--layer", "0"]) == 2
    assert "plain LLaVA" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
