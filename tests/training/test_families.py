"""The second model family (SmolVLM / Idefics3) trains through the same trainer as LLaVA: full CAFe steps
with the whole recipe (several photos per prompt, hard negatives), LoRA on its own module names, a
merged folder that plain transformers loads, and the words it trained on."""

from __future__ import annotations

import json
import math

import pytest

from cafe_core.vocab import VOCAB_FILE

from .conftest import folder_weights, folder_weights_named, read_metrics, settings, train_in_process
from .test_trainer import HAVE_BNB, _changed, plain_hf_load

RECIPE = {"p_grounded": 1.0, "p_multi_photo": 1.0, "p_pair": 0.5, "p_full_caption": 0.2, "p_hard": 1.0,
          "extra_turns": 1, "position_turns": 1}


@pytest.fixture(scope="module")
def smolvlm_runs(train_data, tmp_path_factory):
    from cafe_core.tiny import save_tiny

    root = tmp_path_factory.mktemp("smolvlm")
    base = save_tiny(root / "base", "smolvlm", seed=0)
    common = {"base_model": str(base), "max_steps": 2, **RECIPE}
    runs = {
        "full": train_in_process(settings(train_data, root / "full", **common)),
        "lora": train_in_process(settings(train_data, root / "lora", mode="lora", lora_vision=True, **common)),
    }
    if HAVE_BNB:
        runs["qlora"] = train_in_process(settings(train_data, root / "qlora", mode="qlora", **common))
    return base, runs


def test_full_cafe_steps_move_every_part(smolvlm_runs):
    base, runs = smolvlm_runs
    trainer = runs["full"]
    assert trainer.family.name == "idefics3"
    rows = read_metrics(trainer.out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["lm_loss"]) and math.isfinite(r["con_loss"]) for r in rows)
    final, start = folder_weights(trainer.final), folder_weights(base)
    for part in ("vision_model.encoder.layers.0", "connector.", "text_model.layers.0"):
        assert _changed(final, start, part), part
    vocab = json.loads((trainer.final / VOCAB_FILE).read_text())["words"]
    assert vocab["photo"] > 0 and "compress" not in vocab  # the conversations' words, not the prompts'


def test_lora_uses_the_family_module_names(smolvlm_runs, tmp_path):
    base, runs = smolvlm_runs
    trainer = runs["lora"]
    # The checkpoint holds what trained: LoRA A/B on both towers' projections + the projector copy.
    trainable = list(folder_weights_named(trainer.out / "checkpoints" / "step-000002" / "model",
                                          "adapter_model.safetensors"))
    assert any("text_model" in n and "lora_A" in n for n in trainable)
    assert any("vision_model" in n and "lora_A" in n for n in trainable)
    assert any("connector" in n and "lora" not in n for n in trainable)  # the projector trains fully
    assert not any("embed_tokens" in n for n in trainable)
    groups = {g["name"] for g in trainer.optimizer.param_groups}
    assert groups == {"main", "vision"}
    final, start = folder_weights(trainer.final), folder_weights(base)
    assert set(final) == set(start)  # merged: a plain Idefics3 folder
    assert _changed(final, start, "text_model.layers.0.self_attn.q_proj.weight")
    plain_hf_load([trainer.final, runs["full"].final], tmp_path)


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes cannot be imported here; see test_bnb_modes_unavailable")
def test_qlora_quantizes_the_family_language_model_and_keeps_its_projector(smolvlm_runs, tmp_path):
    import bitsandbytes as bnb
    import torch

    base, runs = smolvlm_runs
    trainer = runs["qlora"]
    model = trainer.model.get_base_model()
    q_proj = trainer.family.language_model(model).layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.base_layer.weight.quant_type == "nf4"
    projector = trainer.family.projector(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in projector.modules())  # kept in full precision
    assert all(math.isfinite(r["loss"]) for r in read_metrics(trainer.out))
    final, start = folder_weights(trainer.final), folder_weights(base)
    assert set(final) == set(start) and all(v.dtype == torch.float32 for v in final.values())
    assert _changed(final, start, "text_model.layers.0.self_attn.q_proj.weight")
    assert _changed(final, start, "connector.")
    plain_hf_load([trainer.final], tmp_path)
