"""The LM loss never materialises (B, T, vocab) logits: lm_head runs on the supervised positions only.

At a real checkpoint's 152k vocabulary and thousands of image tokens per photo, full-sequence logits are
gigabytes for a few dozen answer tokens; these tests fail if any path of the training forward computes them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from cafe_core.family import family_for
from cafe_core.forward import collate, shared_forward, supervised_lm_loss, tree_forward
from cafe_core.inputs import IGNORE_INDEX, PromptEncoder
from cafe_core.prompts import Turn
from cafe_core.tiny import build_tiny

from .conftest import noise_image
from .test_forward import Sample


class _Head(nn.Module):
    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.head = nn.Linear(hidden, vocab, bias=False)

    def get_output_embeddings(self):
        return self.head


def test_peak_allocation_is_supervised_rows_times_vocab_not_the_sequence():
    """Profiled CPU allocations of loss + backward at a real vocabulary: the largest single tensor is the
    head's weight gradient or the supervised rows' logits, 50x below what (B, T, vocab) logits would take."""
    torch.manual_seed(0)
    B, T, D, V = 2, 500, 16, 151_936
    model = _Head(D, V)
    hidden = torch.randn(B, T, D, requires_grad=True)
    labels = torch.full((B, T), IGNORE_INDEX)
    labels[0, 100:105] = 7
    labels[1, 490:496] = 9
    n_supervised = int((labels[:, 1:] != IGNORE_INDEX).sum())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = supervised_lm_loss(model, hidden, labels)
        loss.backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    allowed = 4 * max(V * D, n_supervised * V) * 1.05  # fp32 bytes
    full_logits = 4 * B * T * V
    assert largest <= allowed < full_logits / 50, (largest, allowed, full_logits)
    # ... and the value is the model's own full-logits loss.
    full = nn.functional.cross_entropy(model.head(hidden).float()[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("forward", ["shared", "tree"])
@pytest.mark.parametrize("preset", ["llava-onevision", "smolvlm"])
def test_training_forward_runs_lm_head_on_supervised_positions_only(preset, forward):
    model, processor = build_tiny(preset)
    encoder = PromptEncoder(processor, family_for(model.config))
    qa = [Turn("user", "what color is the circle?"), Turn("assistant", "red"),
          Turn("user", "how many objects are there?"), Turn("assistant", "two")]
    samples = [Sample(noise_image(0, 32, 32), qa, "a red circle"),
               Sample(noise_image(1, 90, 40), qa[:2], "a blue star")]
    batch = collate(encoder, samples)
    rows_seen: list[tuple] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows_seen.append(tuple(o.shape)))
    try:
        if forward == "shared":
            out = shared_forward(model.train(), batch)
        else:
            out = tree_forward(model.train(), batch, encoder)
    finally:
        hook.remove()
    vocab = model.get_output_embeddings().out_features
    supervised = int((batch.conv["labels"][:, 1:] != IGNORE_INDEX).sum())
    B, T = batch.conv["input_ids"].shape
    assert sum(shape[0] for shape in rows_seen) == supervised < B * T
    assert all(len(shape) == 2 and shape[1] == vocab for shape in rows_seen)  # (N_supervised, vocab), never (B, T, V)
    assert torch.isfinite(out.lm_loss)
