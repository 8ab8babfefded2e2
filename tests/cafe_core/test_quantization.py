"""8-bit and 4-bit (bitsandbytes) loading of a saved tiny model on CPU.

On this project's machines bitsandbytes 0.50 runs both on CPU, so the test checks that they really
work (embed + generate, embeddings close to fp32). Where bitsandbytes cannot be imported, loading
must fail with a ModelLoadError that says so; that branch is checked instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cafe_core import CafeModel, ModelLoadError

from .conftest import noise_image

try:
    import bitsandbytes  # noqa: F401

    HAVE_BNB = True
except Exception:  # missing, or a backend that fails to initialise
    HAVE_BNB = False

# Loose: 4-bit NF4 of a random tiny model is coarse; measured ~0.99 (4bit) and ~0.9999 (8bit).
MIN_COSINE = {"8bit": 0.99, "4bit": 0.9}


@pytest.mark.parametrize("preset", ["llava-onevision", "smolvlm"])
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_loading(tiny_dirs, cafe_models, preset, quantization):
    folder, reference = tiny_dirs[preset], cafe_models[preset]
    if not HAVE_BNB:
        with pytest.raises(ModelLoadError, match=f"{quantization} loading needs bitsandbytes"):
            CafeModel.load(folder, device="cpu", quantization=quantization)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes warns on every fp32->fp16 cast in 8-bit matmuls
        model = CafeModel.load(folder, device="cpu", quantization=quantization)
        import bitsandbytes as bnb

        linear = bnb.nn.Linear8bitLt if quantization == "8bit" else bnb.nn.Linear4bit
        layer = model.family.language_model(model.model).layers[0].self_attn.q_proj
        assert isinstance(layer, linear), type(layer)
        images = [noise_image(i, w, h) for i, (w, h) in enumerate([(32, 32), (90, 40)])]
        texts = ["a red circle", "two blue stars on a gray background"]
        for quant, ref in ((model.embed_images(images), reference.embed_images(images)),
                           (model.embed_texts(texts), reference.embed_texts(texts))):
            cosine = (quant * ref).sum(1)
            assert np.all(cosine > MIN_COSINE[quantization]), cosine
            assert np.abs(quant - ref).max() > 0  # really quantized, not a silent fp32 fallback
        answer = model.generate("what is in the photo?", images[:1], max_new_tokens=4)
        assert isinstance(answer, str)


def test_unknown_quantization_is_a_clear_error(tiny_dirs):
    with pytest.raises(ModelLoadError, match="unknown quantization '3bit'"):
        CafeModel.load(tiny_dirs["llava"], device="cpu", quantization="3bit")


def test_quantizing_an_unsaved_tiny_preset_is_a_clear_error():
    if not HAVE_BNB:
        pytest.skip("bitsandbytes unavailable: the bitsandbytes error comes first")
    with pytest.raises(ModelLoadError, match="save the tiny model first"):
        CafeModel.load("tiny:llava", device="cpu", quantization="8bit")
