"""The auxiliary image-token position loss (training/token_position.py): the head's cross-entropy is ~log(side)
on tokens that carry no position and falls when they do; the trainer adds it to the backpropagated loss,
logs it, keeps the head in checkpoints and never exports it; configs that cannot use it are refused."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import ConfigError, load_config
from training.token_position import ProjectorInputs, TokenPositionHead, grid_side

from .conftest import folder_weights, read_metrics, settings, train_in_process


def test_head_loss_is_chance_without_position_and_learnable_with_it():
    torch.manual_seed(0)
    side, hidden = 4, 16
    head = TokenPositionHead(hidden, side)
    noise = [torch.randn(side * side, hidden) for _ in range(3)]
    assert head(noise).item() == pytest.approx(math.log(side), abs=0.5)
    # Tokens whose features hold their row and column one-hot: the head can read both.
    cell = torch.arange(side * side)
    coded = torch.zeros(side * side, hidden)
    coded[cell, cell // side] = 3.0
    coded[cell, side + cell % side] = 3.0
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        loss = head([coded, coded])
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    with pytest.raises(ValueError, match="not whole 4x4 grids"):
        head([torch.randn(side * side + 1, hidden)])


def test_grid_side_reads_plain_llava_and_refuses_other_token_layouts():
    from cafe_core.tiny import build_tiny

    model, _ = build_tiny("llava")
    vc = model.config.vision_config
    assert grid_side(model) == vc.image_size // vc.patch_size
    model.config.model_type = "llava_onevision"
    with pytest.raises(ConfigError, match="square grid"):
        grid_side(model)


def test_projector_reach_gives_the_same_tokens_and_stops_the_gradient_at_the_projector():
    """token_position_reach: projector: the head reads the very tokens the language model reads, but its loss
    trains the projector only; the tower gets no gradient from it (with reach tower it does)."""
    from cafe_core.family import family_for
    from cafe_core.tiny import build_tiny

    torch.manual_seed(0)
    model, _ = build_tiny("llava")
    family = family_for(model.config)
    vc = model.config.vision_config
    pixels = torch.randn(2, vc.num_channels, vc.image_size, vc.image_size)
    head = TokenPositionHead(model.config.text_config.hidden_size, grid_side(model))
    tower, projector = family.vision_encoder(model), family.projector(model)

    def grads(module):
        return [p.grad for p in module.parameters()]

    with ProjectorInputs(projector) as recorded:
        tokens = list(model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output)
    detached = recorded.detached_tokens(tokens)
    assert [t.shape for t in detached] == [t.shape for t in tokens]
    assert all(torch.allclose(a, b) for a, b in zip(detached, tokens))
    head(detached).backward()
    assert all(g is None for g in grads(tower))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(projector))
    model.zero_grad(set_to_none=True)
    head(tokens).backward()  # reach tower: the same loss also moves the tower
    assert any(g is not None and g.abs().sum() > 0 for g in grads(tower))
    with pytest.raises(RuntimeError, match="1 image tokens"):
        recorded.detached_tokens([torch.zeros(1, 4)])


@pytest.mark.parametrize("bad, match", [({"token_position_weight": -1.0}, ">= 0"),
                                        ({"token_position_weight": 1.0, "forward": "tree"}, "forward: shared"),
                                        ({"token_position_weight": 1.0, "distributed": "fsdp"}, "use ddp"),
                                        ({"token_position_reach": "vision"}, "one of")])
def test_config_refuses_what_the_position_loss_cannot_do(bad, match, tmp_path):
    values = {**settings(tmp_path, tmp_path / "out"), **bad}
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"{k}={v}" for k, v in values.items()]).validate()


@pytest.mark.parametrize("reach", ["tower", "projector"])
def test_trainer_adds_logs_checkpoints_and_does_not_export_the_position_loss(reach, train_data, tmp_path):
    steps = 30
    t = train_in_process(settings(train_data, tmp_path / "pos", token_position_weight=0.5, max_steps=steps,
                                  save_every=15, schedule="constant", token_position_reach=reach))
    records = read_metrics(t.out)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:
        assert r["loss"] == pytest.approx(r["lm_loss"] + r["con_loss"] + 0.5 * r["position_loss"], abs=1e-5)
    assert records[0]["position_loss"] == pytest.approx(math.log(grid_side(t.model)), abs=0.7)
    first, last = (sum(r["position_loss"] for r in part) / 5 for part in (records[:5], records[-5:]))
    # the head and the tokens learn where each token is; slower when only the projector may keep it (the tiny
    # projector reads the tower's last layer, where little of the place is left)
    assert last < {"tower": 0.92, "projector": 0.98}[reach] * first, (first, last)
    state = torch.load(t.out / "checkpoints" / f"step-{steps:06d}" / "trainer_state.pt", weights_only=False)
    assert set(state["position_head"]) == {"proj.weight", "proj.bias"}
    plain = train_in_process(settings(train_data, tmp_path / "plain", max_steps=1))
    assert "position_loss" not in read_metrics(plain.out)[0]
    assert set(folder_weights(t.final)) == set(folder_weights(plain.final))  # the head is never exported
