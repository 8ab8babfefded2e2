"""The learning-rate schedule every training loop here uses: linear warmup, then cosine (or constant)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """Steps of linear warmup: ``warmup_ratio`` of the run, rounded up, at least 1 when the ratio is > 0."""
    return max(1, math.ceil(warmup_ratio * total)) if warmup_ratio > 0 else 0


def lr_factor(step: int, total: int, warmup_ratio: float, min_lr_ratio: float = 0.0, schedule: str = "cosine") -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``: warmup from 1/warmup to 1,
    then cosine decay to ``min_lr_ratio`` at the end (or constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = warmup_steps(total, warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
