"""benchmarks/flops.py: hand-checked numbers, equality with PyTorch's own FLOP counter on real model classes,
and the real checkpoints' specs at their published parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import (
    TextShape,
    cafe_step_forward_flops,
    crops_per_image,
    decode_flops,
    embed_flops,
    lm_flops,
    projector_flops,
    shape_from_config,
    train_flops,
    vision_flops,
)
from benchmarks.real_models import build_config, load_spec
from cafe_core import prompts
from cafe_core.family import family_for, multimodal_base
from cafe_core.inputs import PromptEncoder
from cafe_core.tiny import build_tiny


def test_language_model_flops_by_hand():
    t = TextShape(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    # q 4x4, k 4x2, v 4x2, o 4x4, gate/up/down 3 x 4x8
    assert t.layer_params == 16 + 8 + 8 + 16 + 96
    # 3 tokens: 2 FLOPs per weight per token; causal attention 6 pairs x 4 x d_attn(4); two layers
    assert lm_flops(t, [3]) == 2 * (2 * 144 * 3 + 4 * 4 * 6)
    assert lm_flops(t, [3], causal=False) == 2 * (2 * 144 * 3 + 4 * 4 * 9)
    assert lm_flops(t, [3], head_positions=2) == lm_flops(t, [3]) + 2 * 2 * 4 * 10
    assert lm_flops(t, [2, 1]) == 2 * (2 * 144 * 3 + 4 * 4 * (3 + 1))  # per sequence, not padded
    # decoding 2 tokens after a 3-token context: each reads 4 then 5 positions, and the head
    assert decode_flops(t, 3, 2) == 2 * (2 * 144) * 2 + 2 * 4 * 4 * (4 + 5) + 2 * (2 * 4 * 10)


@pytest.mark.parametrize("preset", ["llava", "llava-onevision", "smolvlm"])
def test_forward_flops_equal_torch_flop_counter(preset):
    """The formula, with the attention square counted in full as matmul counters do, equals what
    FlopCounterMode counts for the real model class's forward over an embedding prompt."""
    model, processor = build_tiny(preset)
    model.config._attn_implementation = "eager"
    shape = shape_from_config(model.config)
    encoder = PromptEncoder(processor, family_for(model.config))
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (50, 90, 3), dtype=np.uint8))
    batch = encoder.encode([prompts.image_embedding_prompt(encoder.chat)], [image])
    crops = sum(crops_per_image(model.config, dict(batch)))
    tokens = int(batch["attention_mask"].sum())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        multimodal_base(model)(**batch)
    ours = vision_flops(shape, crops) + projector_flops(shape, crops) + lm_flops(shape.text, [tokens], causal=False)
    assert ours == counter.get_total_flops()
    assert crops > 1 if preset != "llava" else crops == 1  # the photo is split where the family splits
    assert embed_flops(shape, crops, tokens) < ours  # causal attention: fewer (query, key) pairs


def test_cafe_step_counts_vision_once_and_the_head_on_supervised_rows():
    model, _ = build_tiny("llava-onevision")
    shape = shape_from_config(model.config)
    step = cafe_step_forward_flops(shape, crops=[3, 2], conversation_lengths=[100, 80], supervised_tokens=12,
                                   image_prompt_lengths=[70, 60], text_prompt_lengths=[20, 25])
    assert step == {"vision": vision_flops(shape, 5), "projector": projector_flops(shape, 5),
                    "language": lm_flops(shape.text, [100, 80], 12) + lm_flops(shape.text, [70, 60])
                    + lm_flops(shape.text, [20, 25])}
    assert train_flops(step) == 3 * sum(step.values()) == train_flops(sum(step.values()))
    # LoRA: no weight gradients for the frozen LM, no backward through the frozen vision tower.
    lora = train_flops(step, "lora")
    assert lora == step["vision"] + 3 * step["projector"] + 2 * step["language"] < train_flops(step)
    assert train_flops(step, "qlora", vision_adapters=True) == lora + step["vision"]


@pytest.mark.parametrize("name, params", [("llava-onevision-0.5b-si", 893_618_208),
                                          ("smolvlm-256m-instruct", 256_484_928)])
def test_real_specs_have_the_published_parameter_counts_and_matching_shapes(name, params):
    """Built on the meta device (no memory): LLaVA-OneVision-0.5B-si is 894M parameters, SmolVLM-256M 256M;
    the FLOP shapes read from the config match the modules' own weights."""
    from transformers import AutoModelForImageTextToText

    config, _ = build_config(load_spec(name))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == params
    shape = shape_from_config(config)
    family = family_for(config)
    base = multimodal_base(model)
    lm_layer = getattr(base, family.language_module).layers[0]
    linear = lambda m: sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Linear))  # noqa: E731
    assert linear(lm_layer) == shape.text.layer_params
    vision_layer = getattr(base, family.vision_module).encoder.layers[0]
    v = shape.vision
    assert linear(vision_layer) == 4 * v.hidden**2 + 2 * v.hidden * v.intermediate
    assert linear(getattr(base, family.projector_module)) == sum(i * o for i, o in shape.projector)
