"""The embedding-token rule: pool the last real token, L2-normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row; right for left *and* right padding.

    (Right padding alone would be ``mask.sum(1) - 1``, left padding ``-1``; mixing them up pools a pad.)
    """
    # (B, T) -> (B,)
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.long().flip(1).argmax(1)


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) last-layer, post-norm hidden states -> (B, D) L2-normalised embeddings (float32)."""
    idx = last_token_index(attention_mask).to(hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    return F.normalize(pooled.float(), dim=-1)
