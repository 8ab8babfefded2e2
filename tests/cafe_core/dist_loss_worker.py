"""Worker for test_losses_distributed.py, launched by ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank takes its slice of a fixed union batch, embeds it with a tiny two-tower model wrapped in
DDP, computes ``ContrastiveLoss`` over the gathered batch and writes the loss, its own embeddings'
gradients and the DDP-averaged parameter gradients to ``<out_dir>/rank<r>_<variant>.pt``.
The problem construction is shared with the test (``make_problem``/``make_model``/``embed``) so the
single-process reference is built from exactly the same numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PER_RANK = 3
WORLD = 2
D_IN, D_EMB, N_TAGS = 6, 5, 4
VARIANTS = {  # name -> (gather_with_grad, use_tags)
    "local_replace": (False, False),
    "local_replace_tags": (False, True),
    "gather_with_grad": (True, False),
}


def make_problem():
    """The union batch (WORLD * PER_RANK samples): inputs and multi-hot tags with some shared tags."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * PER_RANK
    x_img = torch.randn(n, D_IN, generator=g)
    x_txt = torch.randn(n, D_IN, generator=g)
    image_tags = (torch.rand(n, N_TAGS, generator=g) < 0.5).float()
    image_tags[:, 0] = 1.0  # every image has tag 0 ...
    text_tags = torch.zeros(n, N_TAGS)
    text_tags[0, 0] = 1.0  # ... so text 0 ("tag 0") matches every image: cross-rank positives
    text_tags[1:] = image_tags[1:]
    return x_img, x_txt, text_tags, image_tags


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Linear(D_IN, D_EMB)
        self.txt = nn.Linear(D_IN, D_EMB)

    def forward(self, x_img, x_txt):
        return F.normalize(self.img(x_img), dim=-1), F.normalize(self.txt(x_txt), dim=-1)


def make_model() -> Towers:
    torch.manual_seed(1)
    return Towers()


def embed(model, x_img, x_txt):
    img, txt = model(x_img, x_txt)
    img.retain_grad()
    txt.retain_grad()
    return img, txt


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from cafe_core.losses import ContrastiveLoss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == WORLD, world
    x_img, x_txt, text_tags, image_tags = make_problem()
    own = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for name, (with_grad, use_tags) in VARIANTS.items():
        model = DDP(make_model())
        img, txt = embed(model, x_img[own], x_txt[own])
        loss_fn = ContrastiveLoss(rank=rank, world_size=world, gather_with_grad=with_grad)
        tags = (text_tags[own], image_tags[own]) if use_tags else (None, None)
        loss = loss_fn(img, txt, *tags)
        loss.backward()  # DDP averages parameter gradients over ranks here
        torch.save(
            {
                "loss": loss.detach(),
                "img_grad": img.grad.detach(),
                "txt_grad": txt.grad.detach(),
                "param_grads": {k: p.grad.detach().clone() for k, p in model.module.named_parameters()},
            },
            Path(out_dir) / f"rank{rank}_{name}.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Results are on disk and the process group is gone. Skip interpreter teardown: with the
    # gather-with-grad autograd path, gloo intermittently aborts there ("terminate called without an
    # active exception", ~1 run in 5), which would fail the test for a reason unrelated to the losses.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
