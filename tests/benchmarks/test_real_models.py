"""benchmarks/real_models.py: a checkpoint's own config.json (no processor settings) builds with its family's
real processor, at reduced depth, and the saved folder loads through CafeModel with consistent image tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.real_models import build_model, load_spec, save_model, with_layers

PLAIN_CONFIG = {  # the form of a hub config.json, at toy widths
    "architectures": ["LlavaOnevisionForConditionalGeneration"], "model_type": "llava_onevision",
    "image_token_index": 151646, "video_token_index": 151647, "vision_feature_select_strategy": "full",
    "vision_feature_layer": -1, "vision_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": [[28, 28], [28, 56], [56, 28]],
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                      "vision_use_head": False},
    "text_config": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1024},
}


def test_with_layers_changes_depth_only():
    spec = load_spec("llava-onevision-0.5b-si")
    cfg = with_layers(spec["model"], 2)
    assert cfg["vision_config"]["num_hidden_layers"] == cfg["text_config"]["num_hidden_layers"] == 2
    assert cfg["text_config"]["hidden_size"] == 896 and cfg["vision_config"]["hidden_size"] == 1152
    assert spec["model"]["text_config"]["num_hidden_layers"] == 24  # the spec itself is untouched
    assert with_layers(spec["model"], None) == spec["model"]


def test_plain_config_json_builds_saves_and_loads(tmp_path):
    from cafe_core import CafeModel, prompts

    path = tmp_path / "config.json"
    path.write_text(json.dumps(PLAIN_CONFIG))
    spec = load_spec(path)
    model, processor = build_model(spec, layers=1)
    assert model.config.text_config.num_hidden_layers == 1 and model.config.vision_config.num_hidden_layers == 1
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.num_image_tokens == 4  # (28 / 14)^2, read from the vision config
    cafe = CafeModel.load(save_model(model, processor, tmp_path / "model"), device="cpu", dtype="float32")
    photo = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 70, 3), dtype=np.uint8))
    vectors = cafe.embed_images([photo])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    batch = cafe.encoder.encode([prompts.image_embedding_prompt(cafe.chat)], [photo])
    assert int((batch["input_ids"] == cafe.encoder.image_token_id).sum()) > 4  # anyres: base view + tiles


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="llava-onevision-0.5b-si"):
        load_spec("no-such-model")
