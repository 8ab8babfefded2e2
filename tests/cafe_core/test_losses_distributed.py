"""2-process torchrun (gloo, CPU): the gathered loss equals the single-process loss over the union batch,
and gradients follow the scaling documented in cafe_core/losses.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cafe_core.losses import ContrastiveLoss

from . import dist_loss_worker as w

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_loss")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [str(TORCHRUN), "--nproc_per_node", str(w.WORLD), "--master_port", str(_free_port()),
           str(Path(w.__file__)), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {(r, v): torch.load(out / f"rank{r}_{v}.pt") for r in range(w.WORLD) for v in w.VARIANTS}


def _single_process(use_tags: bool):
    """Reference: one process, the whole union batch, no gathering."""
    x_img, x_txt, text_tags, image_tags = w.make_problem()
    model = w.make_model()
    img, txt = w.embed(model, x_img, x_txt)
    tags = (text_tags, image_tags) if use_tags else (None, None)
    loss = ContrastiveLoss()(img, txt, *tags)
    loss.backward()
    return {"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad,
            "param_grads": {k: p.grad for k, p in model.named_parameters()}}


def _own(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * w.PER_RANK : (rank + 1) * w.PER_RANK]


@pytest.mark.parametrize("variant", list(w.VARIANTS))
def test_gathered_loss_equals_union_batch_loss(rank_results, variant):
    ref = _single_process(use_tags=w.VARIANTS[variant][1])
    for r in range(w.WORLD):
        torch.testing.assert_close(rank_results[r, variant]["loss"], ref["loss"], rtol=1e-6, atol=1e-7)
    if variant == "local_replace_tags":  # the tags really change the loss (cross-rank positives exist)
        assert abs(ref["loss"].item() - _single_process(use_tags=False)["loss"].item()) > 1e-3


@pytest.mark.parametrize("variant", ["local_replace", "local_replace_tags"])
def test_local_replace_gradients(rank_results, variant):
    """Own-slot feature grads = single-process grads; DDP-averaged parameter grads = 1/W of single-process."""
    ref = _single_process(use_tags=w.VARIANTS[variant][1])
    for r in range(w.WORLD):
        res = rank_results[r, variant]
        torch.testing.assert_close(res["img_grad"], _own(ref["img_grad"], r), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res["txt_grad"], _own(ref["txt_grad"], r), rtol=1e-5, atol=1e-7)
        for k, g in ref["param_grads"].items():
            torch.testing.assert_close(res["param_grads"][k], g / w.WORLD, rtol=1e-5, atol=1e-7)
            assert g.abs().max() > 1e-4  # a non-trivial gradient, so the comparison means something


def test_gather_with_grad_gradients(rank_results):
    """Backprop through the gather: every rank's loss sends gradient to every rank's features, so a rank's
    feature grads are W x single-process and the DDP-averaged parameter grads equal single-process."""
    ref = _single_process(use_tags=False)
    for r in range(w.WORLD):
        res = rank_results[r, "gather_with_grad"]
        torch.testing.assert_close(res["img_grad"], w.WORLD * _own(ref["img_grad"], r), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res["txt_grad"], w.WORLD * _own(ref["txt_grad"], r), rtol=1e-5, atol=1e-7)
        for k, g in ref["param_grads"].items():
            torch.testing.assert_close(res["param_grads"][k], g, rtol=1e-5, atol=1e-7)
