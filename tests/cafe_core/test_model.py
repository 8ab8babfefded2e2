"""CafeModel on both tiny architectures: batch invariance, generation, streaming, save/load, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cafe_core import CafeModel, prompts
from cafe_core.family import family_for
from cafe_core.tiny import build_tiny

from .conftest import ARCHS, noise_image

TOL = 1e-4  # fp32 batch-vs-single tolerance from the issue

TEXTS = [
    "dog",
    "a photo of a red circle on the left and a small blue star on the right on a gray background",
    "how many squares are there",
    "Ünïcödé text — with punctuation!?",
]


def _one_by_one(fn, *columns):
    return np.concatenate([fn(*[[c] for c in row]) for row in zip(*columns)])


@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_are_batch_invariant(cafe_models, mixed_images, arch):
    model = cafe_models[arch]
    cases = {
        "images": (model.embed_images, (mixed_images,)),
        "texts": (model.embed_texts, (TEXTS,)),
        "image+text": (model.embed_multimodal, (mixed_images[:4], TEXTS)),
    }
    for name, (fn, cols) in cases.items():
        batched = fn(*cols)
        single = _one_by_one(fn, *cols)
        assert batched.shape == (len(cols[0]), model.dim) and batched.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
        diff = np.abs(batched - single).max()
        assert diff <= TOL, f"{arch} {name}: batch vs single max abs diff {diff}"
        # batch_size smaller than the input splits into several forward passes; same vectors.
        split = fn(*cols, batch_size=2)
        assert np.abs(split - single).max() <= TOL
    # Different inputs give different vectors (pooling does not collapse onto a shared token).
    images = model.embed_images(mixed_images)
    assert np.abs(images[0] - images[1]).max() > 1e-3
    texts = model.embed_texts(TEXTS)
    assert np.abs(texts[0] - texts[1]).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_zero_one_and_three_images(cafe_models, mixed_images, arch):
    model = cafe_models[arch]
    for n in (0, 1, 3):
        images = mixed_images[:n]
        inputs = model._generation_inputs("what is in the photos?", images)
        image_tokens = int((inputs["input_ids"] == model.encoder.image_token_id).sum())
        assert (image_tokens > 0) == (n > 0)
        answer = model.generate("what is in the photos?", images, max_new_tokens=6)
        assert isinstance(answer, str)
        n_new = len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert n_new <= 6
    # The images reach the language model: the next-token distribution depends on them.
    with torch.no_grad():
        logits = [model.model(**model._generation_inputs("what?", mixed_images[i : i + 1])).logits[0, -1]
                  for i in (0, 1)]
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_stream_concatenation_equals_generate(cafe_models, mixed_images, arch):
    model = cafe_models[arch]
    for n in (0, 1, 3):
        images = mixed_images[:n]
        greedy = model.generate("describe the photo", images, max_new_tokens=12)
        assert "".join(model.stream("describe the photo", images, max_new_tokens=12)) == greedy
        # Sampling gives varied text from random weights: a stronger check of the incremental decode.
        torch.manual_seed(n)
        sampled = model.generate("describe the photo", images, max_new_tokens=16, do_sample=True, temperature=1.5)
        torch.manual_seed(n)
        pieces = list(model.stream("describe the photo", images, max_new_tokens=16, do_sample=True, temperature=1.5))
        assert "".join(pieces) == sampled
        assert sampled.strip(), "sampling from the tiny model should produce some text"


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_and_fingerprint(tiny_dirs, cafe_models, tmp_path, mixed_images, arch):
    loaded = cafe_models[arch]
    # The in-memory model built with the same seed is the one that was saved.
    built = CafeModel(*build_tiny(arch, seed=0))
    np.testing.assert_array_equal(built.embed_images(mixed_images[:2]), loaded.embed_images(mixed_images[:2]))
    assert built.fingerprint == loaded.fingerprint
    assert loaded.fingerprint.startswith("cafe-")

    # save_pretrained of the loaded model -> load again: identical vectors and fingerprint.
    out = tmp_path / "resaved"
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    again = CafeModel.load(out, device="cpu", dtype="float32")
    np.testing.assert_array_equal(again.embed_images(mixed_images[:2]), loaded.embed_images(mixed_images[:2]))
    np.testing.assert_array_equal(again.embed_texts(TEXTS), loaded.embed_texts(TEXTS))
    assert again.fingerprint == loaded.fingerprint

    # Same weights in bfloat16: same fingerprint (the digest is dtype-robust).
    assert CafeModel.load(tiny_dirs[arch], device="cpu", dtype="bfloat16").fingerprint == loaded.fingerprint

    # A different seed (different weights) -> different fingerprint.
    assert CafeModel(*build_tiny(arch, seed=1)).fingerprint != loaded.fingerprint


@pytest.mark.parametrize("arch", ARCHS)
def test_perturbed_weight_changes_fingerprint(cafe_models, arch):
    base = cafe_models[arch]
    model, processor = build_tiny(arch, seed=0)
    reference = CafeModel(model, processor).fingerprint
    assert reference == base.fingerprint
    with torch.no_grad():
        # A fine-tune-like change of one weight matrix in the last language layer.
        lm = getattr(model.model, family_for(model.config).language_module)
        w = lm.layers[-1].mlp.down_proj.weight
        w.add_(0.01 * torch.randn_like(w))
    assert CafeModel(model, processor).fingerprint != reference
    # A single changed value in a small tensor (every element of small tensors is hashed).
    model2, processor2 = build_tiny(arch, seed=0)
    with torch.no_grad():
        getattr(model2.model, family_for(model2.config).language_module).norm.weight[3] += 0.5
    assert CafeModel(model2, processor2).fingerprint != reference


def test_embedding_dim_is_language_hidden_size(cafe_models):
    for model in cafe_models.values():
        assert model.dim == model.model.config.text_config.hidden_size
        assert model.embed_texts(["x"]).shape == (1, model.dim)


def test_composed_query_differs_from_image_alone(ov_model):
    image = noise_image(7, 48, 40)
    img = ov_model.embed_images([image])[0]
    mm = ov_model.embed_multimodal([image, image], ["at night", "with a red circle"])
    assert np.abs(mm[0] - img).max() > 1e-3 and np.abs(mm[0] - mm[1]).max() > 1e-3


def test_closing_a_stream_early_stops_generation(ov_model):
    """A consumer that walks away (e.g. a closed browser tab) must not leave a generation thread running."""
    import threading
    import time

    before = {t.ident for t in threading.enumerate()}
    pieces = ov_model.stream("Describe the photo.", max_new_tokens=4000)
    next(pieces)
    pieces.close()
    deadline = time.time() + 10
    while time.time() < deadline and {t.ident for t in threading.enumerate()} - before:
        time.sleep(0.05)
    assert not ({t.ident for t in threading.enumerate()} - before), "generation thread still running after close()"


@pytest.mark.parametrize("arch", ARCHS)
def test_choice_probabilities_agree_with_the_reply_scores(cafe_models, mixed_images, arch):
    """Both ways of reading a choice agree with reply_logprob: choices that start with different tokens
    are read from the next-token distribution (= the softmax of their one-token replies' scores), others
    (a choice that starts another) from whole replies closed by the end-of-turn token."""
    model = cafe_models[arch]
    images = mixed_images[:2]
    question = "Is there a red circle in the photo?"
    lead = model.chat.header("assistant", "x")[len(model.chat.generation_header):]
    ids = lambda text: model.tokenizer(lead + text, add_special_tokens=False)["input_ids"]  # noqa: E731
    vocab = [t for t in ("yes", "no", "red", "blue", "circle", "star", "x", "y", "z") if len(ids(t)) == 1]
    assert len(vocab) >= 2, vocab  # single tokens (single letters are, in any byte-level BPE)
    fast = model.choice_probabilities([question] * 2, images, vocab[:2])
    scores = np.array([[model.reply_logprob(question, lead + c, [im])[0] for c in vocab[:2]] for im in images])
    np.testing.assert_allclose(fast, np.exp(scores) / np.exp(scores).sum(1, keepdims=True), atol=1e-4)

    choices = [vocab[0], vocab[0] + " " + vocab[1]]  # the first starts the second: whole replies
    slow = model.choice_probabilities([question] * 2, images, choices)
    end = model.chat.end
    scores = np.array([[model.reply_logprob(question, lead + c + end, [im])[0] for c in choices] for im in images])
    np.testing.assert_allclose(slow, np.exp(scores) / np.exp(scores).sum(1, keepdims=True), atol=1e-4)
    assert slow.shape == (2, 2) and np.allclose(slow.sum(1), 1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_reply_logprob_matches_the_logits_and_is_batch_invariant(cafe_models, mixed_images, arch):
    model = cafe_models[arch]
    question, reply = "Describe the photo.", " a red circle on the left"
    batched = model.reply_logprob(question, reply, mixed_images)  # anyres: rows of different lengths
    single = [model.reply_logprob(question, reply, [im])[0] for im in mixed_images]
    assert len(batched) == len(mixed_images) and all(s < 0 for s in single)
    np.testing.assert_allclose(batched, single, atol=1e-3)
    # By hand, for one photo: the reply's tokens are the last ones of prompt + reply.
    prompt = prompts.generation_prompt(question, 1, chat=model.chat)
    n = len(model.tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]) - \
        len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    batch = model.encoder.encode([prompt + reply], mixed_images[:1])
    with torch.no_grad():
        logits = model.model(**batch).logits[0].float().log_softmax(-1)
    ids = batch["input_ids"][0]
    by_hand = sum(float(logits[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
    assert abs(by_hand - single[0]) < 1e-3
    assert max(single) - min(single) > 1e-4  # the photo is read
    with pytest.raises(Exception, match="empty"):
        model.reply_logprob(question, "  ", mixed_images[:1])


@pytest.mark.parametrize("arch", ARCHS)
def test_questions_about_one_photo_run_the_photo_once_and_score_the_same(cafe_models, mixed_images, arch):
    """Several questions about the same image share its prompt beginning (cafe_core.prefix): the vision
    encoder runs once per image, and every score equals the one of the prompt run whole."""
    model = cafe_models[arch]
    images = mixed_images[:3]  # anyres: blocks of different lengths
    questions = ["Is there a red circle in the photo?", "What color is the star?", "Is it night?"]
    runs = []
    hook = model.family.vision_encoder(model.model).register_forward_hook(lambda *a: runs.append(1))
    try:
        whole = np.array([[model.choice_probabilities([q], [im])[0, 0] for q in questions] for im in images])
        whole_logp = [model.reply_logprob(q, " a red circle", [im])[0] for im in images for q in questions]
        runs.clear()
        rows = [(q, im) for im in images for q in questions]  # one call: grouped by image
        shared = model.choice_probabilities([q for q, _ in rows], [im for _, im in rows])[:, 0].reshape(3, 3)
        assert len(runs) == len(images)
        runs.clear()
        with model.sharing_image_prefixes():  # separate calls, one prefix per image for all of them
            one_by_one = np.array([[model.choice_probabilities([q], [im])[0, 0] for q in questions] for im in images])
            shared_logp = [model.reply_logprob(q, " a red circle", [im])[0] for im in images for q in questions]
        assert len(runs) == len(images)
    finally:
        hook.remove()
    np.testing.assert_allclose(shared, whole, atol=1e-4)
    np.testing.assert_allclose(one_by_one, whole, atol=1e-4)
    np.testing.assert_allclose(shared_logp, whole_logp, atol=1e-3)
    assert np.ptp(whole) > 1e-4  # the questions are read
