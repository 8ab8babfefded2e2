"""Bad input gets a clear ModelLoadError / InputError whose message says what to do."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cafe_core import CafeModel, InputError, ModelLoadError

from .conftest import noise_image


@pytest.fixture(scope="module")
def text_only_dir(tmp_path_factory):
    """A saved Qwen2ForCausalLM (text-only) folder: a real checkpoint of the wrong kind."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    out = tmp_path_factory.mktemp("qwen2_text_only")
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model path .*nope does not exist"):
        CafeModel.load(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        CafeModel.load("./models/not-there/at-all", device="cpu")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a model folder \\(no config.json\\)"):
        CafeModel.load(tmp_path, device="cpu")
    with pytest.raises(ModelLoadError, match="not a model folder"):
        CafeModel.load(tmp_path / "weights.bin", device="cpu")


def test_wrong_model_type(text_only_dir):
    with pytest.raises(ModelLoadError, match="is a 'qwen2' checkpoint, not an image-text-to-text model"):
        CafeModel.load(text_only_dir, device="cpu")


def test_unknown_tiny_preset_and_dtype():
    with pytest.raises(ModelLoadError, match="unknown tiny preset 'huge'"):
        CafeModel.load("tiny:huge", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        CafeModel.load("tiny:llava", device="cpu", dtype="float8")


def test_empty_inputs(ov_model):
    with pytest.raises(InputError, match="embed_images needs at least one image"):
        ov_model.embed_images([])
    with pytest.raises(InputError, match="embed_texts needs at least one text"):
        ov_model.embed_texts([])
    with pytest.raises(InputError, match="embed_multimodal needs at least one"):
        ov_model.embed_multimodal([], [])


def test_bad_images(ov_model):
    gray = noise_image(0, 32, 32).convert("L")
    with pytest.raises(InputError, match=r"image 0 has mode 'L'; convert it to RGB"):
        ov_model.embed_images([gray])
    rgba = noise_image(0, 32, 32).convert("RGBA")
    with pytest.raises(InputError, match=r"image 1 has mode 'RGBA'"):
        ov_model.embed_images([noise_image(1, 32, 32), rgba])
    with pytest.raises(InputError, match=r"image 0 has zero size \(0x10\)"):
        ov_model.embed_images([Image.new("RGB", (0, 10))])
    with pytest.raises(InputError, match="is a ndarray, expected a PIL.Image"):
        ov_model.embed_images([np.asarray(noise_image(0, 8, 8))])
    with pytest.raises(InputError, match="has mode 'L'"):
        ov_model.generate("what?", [gray])
    with pytest.raises(InputError, match="zero size"):
        ov_model.embed_multimodal([Image.new("RGB", (5, 0))], ["x"])


def test_empty_and_mismatched_text(ov_model):
    with pytest.raises(InputError, match="text 1 is empty"):
        ov_model.embed_texts(["fine", "   "])
    with pytest.raises(InputError, match="text 0 is empty"):
        ov_model.embed_texts([""])
    with pytest.raises(InputError, match="the question is empty"):
        ov_model.generate("", [])
    with pytest.raises(InputError, match="the question is empty"):
        list(ov_model.stream("  ", []))
    with pytest.raises(InputError, match="got 2 images but 1 texts"):
        ov_model.embed_multimodal([noise_image(0, 8, 8), noise_image(1, 8, 8)], ["x"])
