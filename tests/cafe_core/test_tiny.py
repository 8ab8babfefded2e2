"""tiny presets: an untied preset really has its own LM head, and keeps it through save/load."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText

from cafe_core.tiny import PRESETS, TinyPreset, build_tiny, save_tiny


def test_untied_preset_has_its_own_lm_head_after_save_and_load(tmp_path):
    assert PRESETS["llava-demo"].tie_embeddings and not PRESETS["llava-demo-untied"].tie_embeddings
    preset = TinyPreset("llava", tie_embeddings=False)
    built, _ = build_tiny(preset)
    assert built.lm_head.weight.data_ptr() != built.get_input_embeddings().weight.data_ptr()
    assert not torch.equal(built.lm_head.weight, built.get_input_embeddings().weight)

    loaded = AutoModelForImageTextToText.from_pretrained(save_tiny(tmp_path / "m", preset), dtype=torch.float32)
    assert loaded.config.tie_word_embeddings is False
    head, emb = loaded.lm_head.weight, loaded.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr()
    assert torch.equal(head, built.lm_head.weight) and torch.equal(emb, built.get_input_embeddings().weight)
    # A step on the head alone leaves the input embeddings where they were.
    before = emb.detach().clone()
    (head.sum()).backward()
    torch.optim.SGD([head], lr=1.0).step()
    assert torch.equal(emb.detach(), before) and not torch.equal(head.detach(), before)


def test_tied_preset_shares_one_matrix():
    built, _ = build_tiny(TinyPreset("llava"))
    assert built.lm_head.weight.data_ptr() == built.get_input_embeddings().weight.data_ptr()
