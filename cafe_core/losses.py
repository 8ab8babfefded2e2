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
    hard_text_emb: torch.Tensor | None = None,
    hard_skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: ``(CE(image->text) + CE(text->image)) / 2`` with diagonal labels.

    ``positives`` (optional, (N, N) bool, rows = texts, cols = images): off-diagonal pairs that also
    match; they are removed from the denominators (not treated as negatives).
    ``hard_text_emb`` (optional, (H, D)): extra texts that are negatives for the images only (the
    image->text side), e.g. a caption with one attribute changed; ``hard_skip`` ((N, H) bool) leaves
    out pairs where such a text does match an image (or is padding).
    """
    logits_per_image = scale * image_emb @ text_emb.T  # (N_img, N_txt)
    logits_per_text = logits_per_image.T
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    neg_inf = torch.finfo(logits_per_image.dtype).min
    if positives is not None:
        off_diag = positives & ~torch.eye(positives.shape[0], dtype=torch.bool, device=positives.device)
        logits_per_text = logits_per_text.masked_fill(off_diag, neg_inf)
        logits_per_image = logits_per_image.masked_fill(off_diag.T, neg_inf)
    if hard_text_emb is not None and hard_text_emb.shape[0]:
        hard = scale * image_emb @ hard_text_emb.T  # (N_img, H)
        if hard_skip is not None:
            hard = hard.masked_fill(hard_skip, neg_inf)
        logits_per_image = torch.cat([logits_per_image, hard], dim=1)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _gather_ragged(features: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``gather_features`` for per-rank row counts that differ (hard negatives): rows padded to the
    largest count, gathered, and a (rows,) bool mask of the real ones. The own slot keeps its graph."""
    if world_size == 1:
        return features, torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    n = torch.tensor([max(1, features.shape[0])], device=features.device)  # never a zero-size collective
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    rows = int(n.item())
    pad = rows - features.shape[0]
    padded = torch.cat([features, features.new_zeros((pad, *features.shape[1:]))]) if pad else features
    valid = torch.arange(rows, device=features.device) < features.shape[0]
    gathered = gather_features(padded, rank, world_size)
    valid_all = gather_features(valid.float(), rank, world_size).bool()
    return gathered, valid_all


class ContrastiveLoss(nn.Module):
    """InfoNCE with cross-rank gathering (open_clip ``ClipLoss`` shape, fixed scale), optional hard negatives.

    ``hard_negatives=True``: every call gathers hard negative texts (a rank with none in its batch takes
    part with zero rows), so ranks never disagree on the collectives; needed across processes whenever
    any batch may carry them.
    """

    def __init__(self, scale: float = LOGIT_SCALE, rank: int = 0, world_size: int = 1, gather_with_grad: bool = False,
                 hard_negatives: bool = False):
        super().__init__()
        self.scale, self.rank, self.world_size, self.gather_with_grad = scale, rank, world_size, gather_with_grad
        self.hard_negatives = hard_negatives

    def forward(self, image_emb, text_emb, text_tags=None, image_tags=None, hard_text_emb=None,
                hard_tags=None) -> torch.Tensor:
        if self.hard_negatives and hard_text_emb is None:
            hard_text_emb = text_emb.new_zeros((0, text_emb.shape[1]))
            if text_tags is not None:
                hard_tags = text_tags.new_zeros((0, text_tags.shape[1]))
        all_img = gather_features(image_emb, self.rank, self.world_size, self.gather_with_grad)
        all_txt = gather_features(text_emb, self.rank, self.world_size, self.gather_with_grad)
        tagged = text_tags is not None and image_tags is not None
        positives = all_it = None
        if tagged:
            all_tt = gather_features(text_tags.float(), self.rank, self.world_size)
            all_it = gather_features(image_tags.float(), self.rank, self.world_size)
            positives = match_mask(all_tt, all_it)
        hard = hard_skip = None
        if hard_text_emb is not None:
            hard, valid = _gather_ragged(hard_text_emb, self.rank, self.world_size)
            hard_skip = ~valid[None, :].expand(all_img.shape[0], -1)
            if tagged and hard_tags is not None:
                all_ht, _ = _gather_ragged(hard_tags.float(), self.rank, self.world_size)
                hard_skip = hard_skip | match_mask(all_ht, all_it).T  # a "hard negative" that fits another photo
            hard = hard.float()
        return contrastive_loss(all_img.float(), all_txt.float(), self.scale, positives, hard, hard_skip)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over supervised tokens (labels == -100 are ignored)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


@dataclass
class LossOutput:
    """``loss``: the tensor to backpropagate; ``lm_loss`` / ``con_loss`` / ``position_loss``: the unscaled
    parts (for logs)."""

    loss: torch.Tensor
    lm_loss: torch.Tensor | None
    con_loss: torch.Tensor | None
    position_loss: torch.Tensor | None = None


class CafeLoss(nn.Module):
    """``L = lm_weight * L_lm + con_weight * L_con``; ``mode`` picks CAFe, contrastive-only or LM-only.
    With ``position_weight`` > 0 a trainer's auxiliary image-token position loss is added
    (``+ position_weight * L_pos``; training/token_position.py).

    ``forward`` returns the tensor that is backpropagated (open_clip ``CoCaLoss`` style). A trainer that
    accumulates micro-batches passes each part's share of the step: ``lm_scale`` (this micro-batch's
    share of the step's supervised tokens, times the data-parallel world size since DDP averages
    gradients) and ``con_scale`` (1 / micro-batches), so the step's gradient is that of one big batch.
    """

    def __init__(self, mode: str = "cafe", con_weight: float = 1.0, lm_weight: float = 1.0, scale: float = LOGIT_SCALE,
                 rank: int = 0, world_size: int = 1, gather_with_grad: bool = False, hard_negatives: bool = False,
                 position_weight: float = 0.0):
        super().__init__()
        if mode not in LOSS_MODES:
            raise ValueError(f"unknown loss mode {mode!r}; choose one of {LOSS_MODES}")
        self.mode, self.con_weight, self.lm_weight = mode, con_weight, lm_weight
        self.position_weight = position_weight
        self.contrastive = ContrastiveLoss(scale, rank, world_size, gather_with_grad, hard_negatives)

    @property
    def needs_lm(self) -> bool:
        return self.mode in ("cafe", "lm")

    @property
    def needs_embeddings(self) -> bool:
        return self.mode in ("cafe", "contrastive")

    def combine(self, lm_value=None, con_value=None, lm_scale: float = 1.0, con_scale: float = 1.0,
                position_value=None):
        """``lm_weight * lm_scale * L_lm + con_weight * con_scale * L_con`` over the parts this mode uses,
        ``+ position_weight * con_scale * L_pos`` when given (tensors or plain numbers; the logged step loss
        is this with scales 1). L_pos, like L_con, is a mean per micro-batch."""
        total = 0.0
        if self.needs_lm:
            total = self.lm_weight * lm_value * lm_scale
        if self.needs_embeddings:
            total = total + self.con_weight * con_value * con_scale
        if position_value is not None and self.position_weight > 0:
            total = total + self.position_weight * position_value * con_scale
        return total

    def forward(self, lm_logits=None, lm_labels=None, image_emb=None, text_emb=None, text_tags=None, image_tags=None,
                lm_value: torch.Tensor | None = None, hard_text_emb=None, hard_tags=None, lm_scale: float = 1.0,
                con_scale: float = 1.0, position_value: torch.Tensor | None = None) -> LossOutput:
        """Either ``lm_logits`` + ``lm_labels`` or a precomputed ``lm_value`` for the LM part;
        ``position_value``: the auxiliary position loss of this micro-batch, if the trainer computes one."""
        l_lm = l_con = None
        if self.needs_lm:
            l_lm = lm_value if lm_value is not None else lm_loss(lm_logits, lm_labels)
        if self.needs_embeddings:
            l_con = self.contrastive(image_emb, text_emb, text_tags, image_tags, hard_text_emb, hard_tags)
        total = self.combine(l_lm, l_con, lm_scale, con_scale, position_value)
        return LossOutput(total, l_lm, l_con, position_value)
