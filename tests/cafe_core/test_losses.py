"""Contrastive and LM losses against values computed by hand (math, not the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from cafe_core.losses import LOGIT_SCALE, CafeLoss, ContrastiveLoss, contrastive_loss, lm_loss, match_mask

# Unit vectors with simple dot products. S[i, j] = image_i . text_j:
#   [[1.0, 0.6, 0.0],
#    [0.0, 0.8, 0.6],
#    [0.0, 0.0, 0.8]]
IMAGES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
TEXTS = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])


def _ce(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], written out."""
    m = max(logits)
    return -(logits[label] - m) + math.log(sum(math.exp(x - m) for x in logits))


def test_the_losses_use_the_fixed_scale_and_learn_none():
    """Temperature 0.05 is fixed, as in the authors' code: no loss module has a parameter, and the
    default-scale loss is the scale-20 loss (not, say, a learned or 1/0.07 one)."""
    assert LOGIT_SCALE == 20.0
    for module in (ContrastiveLoss(), CafeLoss("cafe")):
        assert list(module.parameters()) == []
    explicit = contrastive_loss(IMAGES, TEXTS, scale=20.0).item()
    assert ContrastiveLoss()(IMAGES, TEXTS).item() == explicit
    assert CafeLoss("contrastive")(image_emb=IMAGES, text_emb=TEXTS).loss.item() == explicit
    assert contrastive_loss(IMAGES, TEXTS, scale=1 / 0.07).item() != pytest.approx(explicit)


def test_contrastive_loss_matches_hand_computation_3x3():
    # image -> text: rows of 20*S; text -> image: columns of 20*S.
    i2t = [_ce([20, 12, 0], 0), _ce([0, 16, 12], 1), _ce([0, 0, 16], 2)]
    t2i = [_ce([20, 0, 0], 0), _ce([12, 16, 0], 1), _ce([0, 12, 16], 2)]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = contrastive_loss(IMAGES, TEXTS)
    assert got.item() == pytest.approx(expected, rel=1e-5)  # fp32 vs exact arithmetic
    assert got.item() == pytest.approx(0.0091310, abs=1e-6)  # the number itself, for the record
    # Explicit scale is honoured: scale 1 gives a much larger loss, again by hand.
    i2t1 = [_ce([1, 0.6, 0], 0), _ce([0, 0.8, 0.6], 1), _ce([0, 0, 0.8], 2)]
    t2i1 = [_ce([1, 0, 0], 0), _ce([0.6, 0.8, 0], 1), _ce([0, 0.6, 0.8], 2)]
    assert contrastive_loss(IMAGES, TEXTS, scale=1.0).item() == pytest.approx((sum(i2t1) + sum(t2i1)) / 6, rel=1e-5)


def test_positives_mask_removes_matching_pairs_from_denominators():
    # Text 1 also matches image 0 (rows = texts, cols = images).
    positives = torch.zeros(3, 3, dtype=torch.bool)
    positives[1, 0] = True
    i2t = [_ce([20, 0], 0), _ce([0, 16, 12], 1), _ce([0, 0, 16], 2)]  # image 0 no longer sees text 1
    t2i = [_ce([20, 0, 0], 0), _ce([16, 0], 0), _ce([0, 12, 16], 2)]  # text 1 no longer sees image 0
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = contrastive_loss(IMAGES, TEXTS, positives=positives)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() < contrastive_loss(IMAGES, TEXTS).item()

    # The diagonal of the mask is irrelevant: the own pair is always the label.
    with_diag = positives | torch.eye(3, dtype=torch.bool)
    assert contrastive_loss(IMAGES, TEXTS, positives=with_diag).item() == pytest.approx(expected, rel=1e-5)
    # All-False = no mask.
    assert contrastive_loss(IMAGES, TEXTS, positives=torch.zeros(3, 3, dtype=torch.bool)).item() == pytest.approx(
        contrastive_loss(IMAGES, TEXTS).item(), rel=1e-7)
    # Everything matches everything: no negatives left, loss 0 and zero gradient.
    img = IMAGES.clone().requires_grad_(True)
    loss = contrastive_loss(img, TEXTS, positives=torch.ones(3, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert img.grad.abs().max().item() < 1e-6


def test_masked_pair_similarity_does_not_move_the_loss():
    # In 4-D, text 1 = (a, 0.8, 0, 0): `a` changes only image 0 . text 1, the pair marked positive.
    images = torch.eye(3, 4)
    positives = torch.zeros(3, 3, dtype=torch.bool)
    positives[1, 0] = True

    def texts(a):
        return torch.tensor([[1.0, 0.0, 0.0, 0.0], [a, 0.8, 0.0, 0.0], [0.0, 0.0, 0.8, 0.0]])

    masked = [contrastive_loss(images, texts(a), positives=positives).item() for a in (0.0, 0.6, 5.0)]
    unmasked = [contrastive_loss(images, texts(a)).item() for a in (0.0, 0.6, 5.0)]
    assert max(masked) - min(masked) < 1e-7
    assert unmasked[2] > unmasked[1] > unmasked[0]


def test_match_mask_by_hand():
    # Tags: (red circle, blue star, green square). Text 0 names red circle; text 1 names red circle + blue star.
    text_tags = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    image_tags = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    expected = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    assert torch.equal(match_mask(text_tags, image_tags), expected)


def test_contrastive_loss_module_uses_tags_as_positives():
    text_tags = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    image_tags = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    # text 1 ("red circle") matches image 0 too; text 0 matches image 1 too.
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    module = ContrastiveLoss()
    assert module(IMAGES, TEXTS, text_tags, image_tags).item() == pytest.approx(
        contrastive_loss(IMAGES, TEXTS, positives=mask).item(), rel=1e-7)
    assert module(IMAGES, TEXTS).item() == pytest.approx(contrastive_loss(IMAGES, TEXTS).item(), rel=1e-7)


def test_lm_loss_by_hand():
    # Vocabulary of 3; 4 positions; logits at t predict label t+1; -100 is ignored.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, 1, -100, 0]])
    expected = (_ce([2.0, 0.0, 0.0], 1) + _ce([0.0, 0.0, 3.0], 0)) / 2
    assert lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_cafe_loss_modes():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    labels = torch.tensor([[-100, 2]])
    lm = _ce([2.0, 0.0, 0.0], 2)
    con = contrastive_loss(IMAGES, TEXTS).item()
    kw = dict(lm_logits=logits, lm_labels=labels, image_emb=IMAGES, text_emb=TEXTS)
    out = CafeLoss("cafe", con_weight=0.5)(**kw)
    assert out.loss.item() == pytest.approx(lm + 0.5 * con, rel=1e-5)
    assert out.lm_loss.item() == pytest.approx(lm, rel=1e-5) and out.con_loss.item() == pytest.approx(con, rel=1e-5)
    out = CafeLoss("contrastive")(**kw)
    assert out.loss.item() == pytest.approx(con, rel=1e-5) and out.lm_loss is None
    out = CafeLoss("lm")(**kw)
    assert out.loss.item() == pytest.approx(lm, rel=1e-5) and out.con_loss is None
    out = CafeLoss("lm")(lm_value=torch.tensor(1.25))
    assert out.loss.item() == 1.25
    assert not CafeLoss("lm").needs_embeddings and not CafeLoss("contrastive").needs_lm
    with pytest.raises(ValueError, match="unknown loss mode"):
        CafeLoss("both")


def test_contrastive_gradient_matches_finite_differences():
    img = torch.nn.functional.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    txt = torch.nn.functional.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    positives = torch.zeros(4, 4, dtype=torch.bool)
    positives[0, 2] = True
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, scale=3.0, positives=positives), (img, txt))
