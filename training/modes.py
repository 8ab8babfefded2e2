"""Parameter modes (full / LoRA / QLoRA), optimizer parameter groups, and preflight checks.

Preflight runs before any data or model work so that a mode the machine cannot run (4-bit without a
usable bitsandbytes backend, 8-bit AdamW without one) fails at once with a clear message.
"""

from __future__ import annotations

import torch

from cafe_core.family import Family

from .config import TrainConfig

# Module names (LoRA targets, the projector, the vision tower) come from the model's family
# (cafe_core.family): LLaVA's `language_model` is Idefics3's `text_model`, and so on.


class ModeUnavailable(RuntimeError):
    """The requested training mode cannot run on this machine."""


def preflight(cfg: TrainConfig, device: torch.device, world: int = 1) -> None:
    """Fail fast, before any work, when an option cannot run here (bitsandbytes modes, FSDP combinations)."""
    if cfg.distributed == "fsdp" and world > 1:
        if cfg.mode == "qlora":
            raise ModeUnavailable("QLoRA cannot be combined with distributed: fsdp (4-bit weights are not "
                                  "sharded); use distributed: ddp, or mode: lora with fsdp")
        if cfg.optim == "adamw8bit":
            raise ModeUnavailable("optim: adamw8bit cannot be combined with distributed: fsdp (bitsandbytes "
                                  "does not take sharded parameters); FSDP already shards the AdamW state")
    needs_bnb = cfg.mode == "qlora" or cfg.optim == "adamw8bit"
    if not needs_bnb:
        return
    what = "QLoRA (4-bit nf4 base)" if cfg.mode == "qlora" else "8-bit AdamW"
    try:
        import bitsandbytes as bnb
    except Exception as e:
        raise ModeUnavailable(f"{what} needs bitsandbytes, which cannot be imported here: {e}") from e
    try:
        if cfg.mode == "qlora":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
            layer(torch.randn(2, 64, device=device))
        if cfg.optim == "adamw8bit":
            p = torch.nn.Parameter(torch.randn(4096, device=device))
            opt = bnb.optim.AdamW8bit([p], lr=1e-3)
            p.sum().backward()
            opt.step()
    except Exception as e:
        raise ModeUnavailable(f"{what} cannot run on {device.type} with this bitsandbytes build: {e}") from e


def apply_mode(model, cfg: TrainConfig, family: Family):
    """Full fine-tune: every parameter trains. LoRA/QLoRA: adapters on the LM (and optionally the vision
    tower); the projector trains fully. Returns the (possibly peft-wrapped) model."""
    if cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if cfg.mode == "qlora":
        model = prepare_quantized(model, cfg)
    lm, vision = family.lora_targets, family.vision_lora_targets
    target = lm if not cfg.lora_vision else f"({lm})|({vision})"
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, modules_to_save=[family.projector_module])
    return get_peft_model(model, lora)


def prepare_quantized(model, cfg: TrainConfig):
    """peft's k-bit preparation (fp32 norms, input grads for checkpointing); also needed on resume."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.grad_checkpointing)


def param_groups(model, cfg: TrainConfig, family: Family) -> list[dict]:
    """Two groups: the vision tower at ``vision_lr``, everything else at ``lr`` (trainable params only)."""
    vision, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (vision if family.is_vision_parameter(name) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "main"}]
    if vision:
        groups.append({"params": vision, "lr": cfg.vision_lr, "weight_decay": cfg.weight_decay, "name": "vision"})
    return groups


def make_optimizer(groups: list[dict], cfg: TrainConfig):
    if cfg.optim == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(0.9, 0.999))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
