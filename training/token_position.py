"""Auxiliary "where is this token" loss: keeps each image token's place in the tokens the reader sees.

``benchmarks/spatial_probe.py`` found that the shipped demo model's image tokens hold *what* is in each
part of the photo but barely *where* a token sits (its column third read from one token: 0.41, majority
0.34; 0.99 at the tower's embeddings): the language model then has only its own 1-D positions, which
count tokens row by row, to find "the left". This throw-away head reads each token's row and column from the
projector outputs (two softmaxes over the grid side) and its cross-entropy is added to the training loss
(``token_position_weight``), so the gradient keeps the grid position in the features. The head is not part
of the exported model: inference is unchanged. As a 200-step fine-tune of the shipped model (lr 1e-4) it
moved nothing (README, "What we tried and learned"); it is meant for from-scratch recipes.

Its gradient reaches the projector and the vision tower (``token_position_reach: tower``) or the projector
alone (``projector``: ``ProjectorInputs`` records what the projector read and the head sees the projector
re-applied to it detached). From scratch at weight 0.5 shapes were not learned with either reach (recipes v2
and v3); at 0.05 with the projector reach they were, and the tokens kept more of their place (v4; README,
"What we tried and learned").

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


class ProjectorInputs:
    """Context manager that records the projector's input during one forward (a pre-hook, removed on exit), and
    gives the head the same tokens with the gradient stopped at the projector. Reusable: each ``with`` starts
    a fresh record. Not an nn.Module, so holding one does not register the projector twice."""

    def __init__(self, projector: nn.Module):
        self.projector = projector
        self.inputs: list[torch.Tensor] = []

    def __enter__(self) -> "ProjectorInputs":
        self.inputs = []
        self._handle = self.projector.register_forward_pre_hook(lambda _module, args: self.inputs.append(args[0]))
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def detached_tokens(self, like: list[torch.Tensor]) -> list[torch.Tensor]:
        """The projector re-applied to its recorded inputs, detached, split per image as ``like`` (the tokens the
        language model read); a clear error if they do not line up."""
        if len(self.inputs) != 1:
            raise RuntimeError(f"the projector ran {len(self.inputs)} times in one forward; expected once")
        out = self.projector(self.inputs[0].detach())
        flat = out.reshape(-1, out.shape[-1])
        counts = [t.shape[0] for t in like]
        if flat.shape[0] != sum(counts):
            raise RuntimeError(f"the projector gave {flat.shape[0]} tokens for {sum(counts)} image tokens")
        return list(torch.split(flat, counts))


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
