"""Shared-vision training forward == naive three-pass forward (losses, embeddings, gradients), with the
vision tower run once per image instead of twice."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from cafe_core.family import family_for
from cafe_core.forward import _tree_layout, collate, naive_forward, shared_forward, tree_forward
from cafe_core.inputs import IGNORE_INDEX, PromptEncoder
from cafe_core.loading import load_model_and_processor
from cafe_core.losses import CafeLoss
from cafe_core.prompts import Turn

from .conftest import ARCHS, noise_image

TOL = 1e-4


@dataclass
class Sample:
    image: object
    conversation: list
    caption: str | None


def _samples(images_only: bool = False) -> list[Sample]:
    qa = [Turn("user", "what color is the circle?"), Turn("assistant", "red"),
          Turn("user", "how many objects are there?"), Turn("assistant", "two")]
    samples = [
        Sample(noise_image(0, 32, 32), qa, "a red circle on the left"),
        Sample(noise_image(1, 90, 40), [Turn("user", "Describe the photo."), Turn("assistant", "a blue star")], "a blue star"),
        Sample(noise_image(2, 30, 100), [Turn("user", "what?"), Turn("assistant", "a tall photo")],
               "a photo of a green triangle in the middle on a white background"),
    ]
    if not images_only:
        samples += [
            Sample(None, [Turn("user", "hello"), Turn("assistant", "hi there")], None),  # text-only chat
            Sample(noise_image(3, 50, 50), [Turn("user", "what?"), Turn("assistant", "nothing")], None),  # no caption
        ]
    return samples


@pytest.fixture(scope="module")
def trainable(tiny_dirs):
    """Fresh fp32 copies in train mode (the session CafeModels stay untouched)."""
    out = {}
    for arch in ARCHS:
        model, processor = load_model_and_processor(tiny_dirs[arch], device="cpu", dtype="float32")
        out[arch] = (model.train(), PromptEncoder(processor))
    return out


def test_collate_labels_cover_only_answers(trainable):
    model, enc = trainable["llava-onevision"]
    batch = collate(enc, _samples())
    assert batch.embed_rows == [0, 1, 2]
    assert batch.sample_image == [0, 1, 2, None, 3]
    ids, labels = batch.conv["input_ids"], batch.conv["labels"]
    supervised = [enc.tokenizer.decode(ids[b][labels[b] != IGNORE_INDEX]) for b in range(len(ids))]
    assert supervised[0] == "red<|im_end|>two<|im_end|>"
    assert supervised[3] == "hi there<|im_end|>"
    assert (labels[batch.conv["attention_mask"] == 0] == IGNORE_INDEX).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_equals_naive_losses_and_embeddings(trainable, arch):
    model, enc = trainable[arch]
    batch = collate(enc, _samples())
    with torch.no_grad():
        s = shared_forward(model, batch)
        n = naive_forward(model, batch, enc)
    assert abs(s.lm_loss.item() - n.lm_loss.item()) <= TOL
    assert s.image_emb.shape == n.image_emb.shape == (3, model.config.text_config.hidden_size)
    assert (s.image_emb - n.image_emb).abs().max().item() <= TOL
    assert (s.text_emb - n.text_emb).abs().max().item() <= TOL
    # Switches: LM only / embeddings only.
    with torch.no_grad():
        lm_only = shared_forward(model, batch, need_embeddings=False)
        emb_only = shared_forward(model, batch, need_lm=False)
    assert lm_only.image_emb is None and emb_only.lm_loss is None
    assert abs(lm_only.lm_loss.item() - s.lm_loss.item()) <= TOL
    assert (emb_only.image_emb - s.image_emb).abs().max().item() <= TOL


class _RowCounter:
    """Counts calls and input rows (images / tiles) of the vision tower through a forward hook."""

    def __init__(self, module):
        self.calls, self.rows = 0, 0
        self.handle = module.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        self.calls += 1
        self.rows += pixels.shape[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_vision_tower_runs_once_per_image(trainable, arch):
    model, enc = trainable[arch]
    samples = _samples(images_only=True)  # every sample has an image and a caption
    tower = family_for(model.config).vision_encoder(model)
    # Rows of one pass over these images, measured one image at a time.
    per_image = 0
    for s in samples:
        one = collate(enc, [s], with_embeddings=False)
        counter = _RowCounter(tower)
        with torch.no_grad():
            model(**one.conv, **one.pixel)
        counter.handle.remove()
        per_image += counter.rows
    batch = collate(enc, samples)
    with torch.no_grad():
        counter = _RowCounter(tower)
        shared_forward(model, batch)
        counter.handle.remove()
        shared_calls, shared_rows = counter.calls, counter.rows
        counter = _RowCounter(tower)
        naive_forward(model, batch, enc)
        counter.handle.remove()
    assert (shared_calls, shared_rows) == (1, per_image)
    assert counter.rows == 2 * per_image
    with torch.no_grad():
        counter = _RowCounter(tower)
        tree_forward(model, batch, enc)
        counter.handle.remove()
    assert (counter.calls, counter.rows) == (1, per_image)
    if arch != "llava":  # anyres / image splitting: tiles, not just one row per image
        assert per_image > len(samples)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_equals_naive_gradients(trainable, arch):
    model, enc = trainable[arch]
    batch = collate(enc, _samples())
    loss_fn = CafeLoss("cafe")
    params = dict(model.named_parameters())
    # Vision tower, projector, LM, embeddings (module names from the family).
    family = family_for(model.config)
    patterns = [
        rf"{family.vision_module}\..*embeddings.patch_embedding.weight$",
        rf"{family.vision_module}\..*encoder.layers.0.self_attn.q_proj.weight$",
        rf"{family.projector_module}\..*weight$",
        rf"{family.language_module}.layers.0.self_attn.q_proj.weight$",
        rf"{family.language_module}.layers.1.mlp.down_proj.weight$",
        rf"{family.language_module}.embed_tokens.weight$",
    ]
    names = [next(n for n in params if re.search(p, n)) for p in patterns]
    grads = {}
    forwards = {"shared": lambda: shared_forward(model, batch), "naive": lambda: naive_forward(model, batch, enc),
                "tree": lambda: tree_forward(model, batch, enc)}
    for which, forward in forwards.items():
        model.zero_grad(set_to_none=True)
        out = forward()
        loss_fn(lm_value=out.lm_loss, image_emb=out.image_emb, text_emb=out.text_emb).loss.backward()
        grads[which] = {k: params[k].grad.clone() for k in names}
    model.zero_grad(set_to_none=True)
    for k in names:
        g_n = grads["naive"][k]
        assert g_n.abs().max() > 1e-6, f"{k}: no gradient reached this parameter"
        for which in ("shared", "tree"):
            torch.testing.assert_close(grads[which][k], g_n, rtol=1e-4, atol=1e-6, msg=f"{arch} {which} {k}")


# ------------------------------------------------------------------ prefix-tree forward
@pytest.mark.parametrize("arch", ARCHS)
def test_tree_forward_equals_naive(trainable, arch):
    model, enc = trainable[arch]
    batch = collate(enc, _samples())
    with torch.no_grad():
        t = tree_forward(model, batch, enc)
        n = naive_forward(model, batch, enc)
    assert abs(t.lm_loss.item() - n.lm_loss.item()) <= TOL
    assert (t.image_emb - n.image_emb).abs().max().item() <= TOL
    assert (t.text_emb - n.text_emb).abs().max().item() <= TOL


def test_tree_layout_reconstructs_each_prompt(trainable):
    """Each branch + the conversation prefix it may attend to = that prompt's standalone tokens and positions."""
    model, enc = trainable["llava-onevision"]
    batch = collate(enc, _samples())
    layout = _tree_layout(batch, enc.pad_id, enc.image_token_id)
    assert layout is not None
    conv_len = batch.conv["attention_mask"].sum(1)
    for e, b in enumerate(batch.embed_rows):
        for prompt, (row, end) in ((batch.image_prompt, layout.image_pos[e]), (batch.text_prompt, layout.text_pos[e])):
            want = prompt["input_ids"][e][: int(prompt["attention_mask"][e].sum())].tolist()
            seen = layout.allowed[row, end].nonzero().flatten().tolist()  # keys the pooled token attends to
            assert [layout.input_ids[row, k].item() for k in seen] == want
            assert [layout.position_ids[row, k].item() for k in seen] == list(range(len(want)))
            assert seen[-1] == end and end >= conv_len[b]  # the pooled token is the branch's own last token
        # Image prompt branch shares the image tokens, so it adds only the instruction suffix.
        img_row, img_end = layout.image_pos[e]
        assert img_end - conv_len[b] < 20
    # The conversation never sees branch tokens; padding labels and branch labels are ignored.
    for b in range(len(conv_len)):
        n = int(conv_len[b])
        assert not layout.allowed[b, :n, n:].any()
        assert (layout.labels[b, n:] == IGNORE_INDEX).all()
        assert torch.equal(layout.labels[b, :n], batch.conv["labels"][b, :n])


def test_tree_forward_falls_back_when_images_follow_text(trainable):
    """Image placeholder after the question: the image-prompt branch would need its own image tokens,
    so tree_forward must fall back (and still match the naive reference)."""
    model, enc = trainable["llava-onevision"]
    samples = [Sample(noise_image(9, 40, 60), [Turn("user", "Look at this: <image>\nwhat is it?"), Turn("assistant", "a star")],
                      "a star"),
               *_samples(images_only=True)[:1]]
    batch = collate(enc, samples)
    assert _tree_layout(batch, enc.pad_id, enc.image_token_id) is None
    with torch.no_grad():
        t = tree_forward(model, batch, enc)
        n = naive_forward(model, batch, enc)
    assert abs(t.lm_loss.item() - n.lm_loss.item()) <= TOL
    assert (t.image_emb - n.image_emb).abs().max().item() <= TOL
