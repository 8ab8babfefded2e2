"""Auxiliary "where is this token" loss: keeps each image token's place in the tokens the reader sees.

``benchmarks/spatial_probe.py`` found that the shipped demo model's image tokens hold *what* is in each
part of the photo but barely *where* a token sits (its column third read from one token: 0.41, majority
0.34; 0.99 at the tower's embeddings): the language model then has only its own 1-D positions, which
count tokens row by row, to find "the left". This throw-away head reads each token's row and column from the
projector outputs (two softmaxes over the grid side) and its cross-entropy is added to the training loss
(``token_position_weight``), so the gradient keeps the grid position in the features. The head is not part
of the exported model: inference is unchanged. As a 200-step fine-tune of the shipped model (lr 1e-4) it
moved nothing (README, "What we tried and learned"); it is meant for from-scratch recipes.

Only families whose photo is one square grid of image tokens (plain LLaVA) are supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError

# The head is a probe: it trains at this multiple of ``lr`` so that it keeps up with the tokens and its
# gradient says how to make their place more readable, not how to fit a still-random read-out.
HEAD_LR_FACTOR = 10.0


def grid_side(model) -> int:
    """Tokens per side of a photo's square token grid; a clear error for models without one."""
    model_type = model.config.model_type
    if model_type != "llava":
        raise ConfigError(f"token_position_weight needs one square grid of image tokens per photo (plain LLaVA); "
                          f"{model_type} packs its image tokens differently")
    vc = model.config.vision_config
    return vc.image_size // vc.patch_size


class TokenPositionHead(nn.Module):
    """Linear read-out of (row, column) from each layer-normalised image token (the scale of projector outputs
    varies from model to model); ``forward`` returns the mean cross-entropy."""

    def __init__(self, hidden: int, side: int):
        super().__init__()
        self.side = side
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.proj = nn.Linear(hidden, 2 * side)

    def forward(self, per_image: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.cat(per_image).float()  # (images * side^2, hidden), each image in raster order
        n = self.side * self.side
        if tokens.shape[0] % n:
            raise ValueError(f"{tokens.shape[0]} image tokens are not whole {self.side}x{self.side} grids")
        cell = torch.arange(n, device=tokens.device).repeat(tokens.shape[0] // n)
        logits = self.proj(self.norm(tokens.to(self.proj.weight.dtype)))
        rows, cols = logits.split(self.side, dim=-1)
        return 0.5 * (F.cross_entropy(rows.float(), cell // self.side) + F.cross_entropy(cols.float(), cell % self.side))
