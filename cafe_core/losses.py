"""CAFe losses, shaped like open_clip's ClipLoss / CoCaLoss.

``ContrastiveLoss``: symmetric InfoNCE over L2-normalised embeddings with a fixed logit scale of 20
(temperature 0.05), labels on the diagonal, in-batch negatives. Across processes, embeddings are
gathered from every rank *without* grad and the own rank's slot is put back with grad (open_clip's
"local replace"), so negatives = per-device batch * world size.

Gradient scaling (tested in tests/cafe_core/test_losses_distributed.py): every rank computes the same
global loss, but gradients flow only through its own slot, so the gradient w.r.t. a rank's own
embeddings equals the single-process gradient of the union-batch loss; after DDP averages parameter
gradients over ``W`` ranks, the contrastive parameter gradient is ``1/W`` of the single-process one
(or of a gather-with-grad implementation). ``gather_with_grad=True`` backpropagates through the
gather instead: every rank's copy of the global loss sends gradient to every rank's embeddings, so a
rank's embedding gradients are ``W`` x the single-process ones and, after DDP averaging, parameter
gradients equal the single-process gradients.

``CafeLoss``: ``lm_weight * L_lm + con_weight * L_con`` with switches for CAFe / contrastive-only / LM-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .inputs import IGNORE_INDEX

LOGIT_SCALE = 20.0  # fixed, not learned (temperature 0.05), as in the authors' code
LOSS_MODES = ("cafe", "contrastive", "lm")


def gather_features(features: torch.Tensor, rank: int, world_size: int, gather_with_grad: bool = False) -> torch.Tensor:
    """Concatenate ``features`` from all ranks in rank order; the own slot keeps its autograd graph."""
    if world_size == 1:
        return features
    if gather_with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(features), dim=0)
    gathered = [torch.zeros_like(features) for _ in range(world_size)]
    dist.all_gather(gathered, features.contiguous())
    gathered[rank] = features  # local replace: gradient flows through this rank's own embeddings
    return torch.cat(gathered, dim=0)


def match_mask(text_tags: torch.Tensor, image_tags: torch.Tensor) -> torch.Tensor:
    """(T, I) bool: text t matches image i when every tag text t names is present in image i.

    Tags are multi-hot (B, F) tensors (e.g. which (color, shape) objects a caption names / a photo has).
    A short query such as "a red circle" matches many photos; those must not count as negatives.
    """
    t = text_tags.float()
    missing = t @ (1.0 - image_tags.float()).T  # how many named tags image i lacks
    return missing == 0


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: float = LOGIT_SCALE,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: ``(CE(image->text) + CE(text->image)) / 2`` with diagonal labels.

    ``positives`` (optional, (N, N) bool, rows = texts, cols = images): off-diagonal pairs that also
    match; they are removed from the denominators (not treated as negatives).
    """
    logits_per_image = scale * image_emb @ text_emb.T  # (N_img, N_txt)
    logits_per_text = logits_per_image.T
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    if positives is not None:
        off_diag = positives & ~torch.eye(positives.shape[0], dtype=torch.bool, device=positives.device)
        neg_inf = torch.finfo(logits_per_text.dtype).min
        logits_per_text = logits_per_text.masked_fill(off_diag, neg_inf)
        logits_per_image = logits_per_image.masked_fill(off_diag.T, neg_inf)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class ContrastiveLoss(nn.Module):
    """InfoNCE with cross-rank gathering (open_clip ``ClipLoss`` shape, fixed scale)."""

    def __init__(self, scale: float = LOGIT_SCALE, rank: int = 0, world_size: int = 1, gather_with_grad: bool = False):
        super().__init__()
        self.scale, self.rank, self.world_size, self.gather_with_grad = scale, rank, world_size, gather_with_grad

    def forward(self, image_emb, text_emb, text_tags=None, image_tags=None) -> torch.Tensor:
        all_img = gather_features(image_emb, self.rank, self.world_size, self.gather_with_grad)
        all_txt = gather_features(text_emb, self.rank, self.world_size, self.gather_with_grad)
        positives = None
        if text_tags is not None and image_tags is not None:
            all_tt = gather_features(text_tags.float(), self.rank, self.world_size)
            all_it = gather_features(image_tags.float(), self.rank, self.world_size)
            positives = match_mask(all_tt, all_it)
        return contrastive_loss(all_img.float(), all_txt.float(), self.scale, positives)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over supervised tokens (labels == -100 are ignored)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


@dataclass
class LossOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor | None
    con_loss: torch.Tensor | None


class CafeLoss(nn.Module):
    """``L = lm_weight * L_lm + con_weight * L_con``; ``mode`` picks CAFe, contrastive-only or LM-only."""

    def __init__(self, mode: str = "cafe", con_weight: float = 1.0, lm_weight: float = 1.0, scale: float = LOGIT_SCALE,
                 rank: int = 0, world_size: int = 1, gather_with_grad: bool = False):
        super().__init__()
        if mode not in LOSS_MODES:
            raise ValueError(f"unknown loss mode {mode!r}; choose one of {LOSS_MODES}")
        self.mode, self.con_weight, self.lm_weight = mode, con_weight, lm_weight
        self.contrastive = ContrastiveLoss(scale, rank, world_size, gather_with_grad)

    @property
    def needs_lm(self) -> bool:
        return self.mode in ("cafe", "lm")

    @property
    def needs_embeddings(self) -> bool:
        return self.mode in ("cafe", "contrastive")

    def forward(self, lm_logits=None, lm_labels=None, image_emb=None, text_emb=None, text_tags=None, image_tags=None,
                lm_value: torch.Tensor | None = None) -> LossOutput:
        """Either ``lm_logits`` + ``lm_labels`` or a precomputed ``lm_value`` for the LM part."""
        total = 0.0
        l_lm = l_con = None
        if self.needs_lm:
            l_lm = lm_value if lm_value is not None else lm_loss(lm_logits, lm_labels)
            total = total + self.lm_weight * l_lm
        if self.needs_embeddings:
            l_con = self.contrastive(image_emb, text_emb, text_tags, image_tags)
            total = total + self.con_weight * l_con
        return LossOutput(total, l_lm, l_con)
