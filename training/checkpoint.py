"""Checkpoints that survive kill -9: written to a temp folder, then renamed; ``LATEST`` updated atomically.

Layout of ``out_dir/checkpoints/step-000200/``: ``model/`` (save_pretrained: full weights, or the LoRA
adapter), ``trainer_state.pt`` (optimizer, scheduler, step, data position, RNG states, config).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write_text

LATEST = "LATEST"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, save_model, state: dict, keep: int) -> Path:
    """``save_model(folder)`` writes the weights; ``state`` goes to trainer_state.pt. Returns the folder."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(tmp / "model")
    torch.save(state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / LATEST, final.name)
    # Keep the newest ``keep`` checkpoints.
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The last completely written checkpoint, or None."""
    pointer = ckpt_root / LATEST
    if pointer.exists():
        p = ckpt_root / pointer.read_text().strip()
        if (p / "trainer_state.pt").exists():
            return p
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop the metric lines (``{"step": ...}`` JSON per line) of steps that will be redone."""
    path = Path(path)
    if not path.exists():
        return
    import json

    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def publish_folder(final: Path, write) -> Path:
    """``write(folder)`` fills a temp folder beside ``final``, which then replaces ``final`` in one rename
    (a reader never sees half a model; a run killed midway leaves the previous ``final`` or none)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
