"""Vision-tower pretraining ("stage 0") for a from-scratch LVLM: teach its tower to see objects.

Real LVLMs start from a pretrained vision encoder (SigLIP, CLIP); our tiny one starts from random
weights, and its tower learned colors but hardly shapes from the language losses alone (shape-of-color
VQA stayed at chance). This stage gives it what a pretrained encoder brings: the tower alone, plus a
throw-away linear head on its max-pooled tokens, is trained to tag each sample-world photo with the
(color, shape) kinds it holds, each kind's position, and the background (multi-label, binary cross
entropy). The features it trains are the ones the LVLM reads (``vision_feature_layer``), and photos
go through the model's own image processor, so the next stage starts from exactly this tower. Stage 0
of the shipped demo model's recipe (README, "The shipped model").

    python -m training pretrain-vision --config training/configs/demo-stage0-vision.yaml [--set key=value] [--resume]

The output ``out_dir/final`` is the whole LVLM (tower trained, the rest as built) in save_pretrained
form: the next stage's ``base_model``. A checkpoint every ``save_every`` steps lets ``--resume``
continue a killed run; ``out_dir/final/vision_pretrain.json`` holds the tagging scores on ``eval_data``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write_json, atomic_write_text
from data.dataset import load_image
from data.vocab import BACKGROUNDS, COLORS, POSITIONS, SHAPES

from .config import ConfigError

log = logging.getLogger(__name__)

# The tags: each (color, shape) kind, each kind at each position, each background.
KINDS = [f"{c} {s}" for c in COLORS for s in SHAPES]
LABELS = KINDS + [f"{k}@{p}" for k in KINDS for p in POSITIONS] + [f"bg:{b}" for b in BACKGROUNDS]
LABEL_INDEX = {t: i for i, t in enumerate(LABELS)}
CHECKPOINT = "checkpoint.pt"


@dataclass
class VisionPretrainConfig:
    base_model: str = "tiny:llava-demo"  # tiny:<preset>, a local folder or a hub id (whose tower is trained)
    data: str = ""  # a `python -m data synth` folder (its ground_truth.json gives the tags)
    eval_data: str = ""  # optional: another synth folder, scored at the end
    eval_max_photos: int = 400
    image_max_side: int = 128  # decode-time downscale, as in the later stages
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 0  # torch.set_num_threads when > 0
    out_dir: str = "runs/vision-pretrain"
    save_every: int = 500  # steps between checkpoints (0: none)
    log_every: int = 20

    def validate(self) -> "VisionPretrainConfig":
        if not self.data:
            raise ConfigError("no training data: set data: PATH (a `python -m data synth` folder)")
        for key in ("steps", "batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0 or self.save_every < 0:
            raise ConfigError("lr must be > 0 and save_every >= 0")
        for key in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}={getattr(self, key)} must be between 0 and 1")
        return self


def photo_labels(photo: dict) -> np.ndarray:
    """The multi-hot LABELS vector of one ground_truth.json photo."""
    y = np.zeros(len(LABELS), dtype=np.float32)
    for o in photo["objects"]:
        kind = f"{o['color']} {o['shape']}"
        y[LABEL_INDEX[kind]] = 1.0
        y[LABEL_INDEX[f"{kind}@{o['position']}"]] = 1.0
    y[LABEL_INDEX[f"bg:{photo['background']}"]] = 1.0
    return y


def load_tagged_photos(folder: str | Path, processor, max_side: int, limit: int | None = None, chunk: int = 256):
    """(pixel_values float16, labels float32) of a synth folder's photos, through the model's processor."""
    from tqdm import tqdm

    folder = Path(folder)
    gt_path = folder / "ground_truth.json"
    if not gt_path.exists():
        raise FileNotFoundError(f"{gt_path} not found: pretrain-vision needs a `python -m data synth` folder")
    photos = json.loads(gt_path.read_text())["photos"][:limit]
    if not photos:
        raise ConfigError(f"{gt_path} lists no photos")
    pixels, labels = [], []
    for i in tqdm(range(0, len(photos), chunk), desc=f"loading {folder.name}", unit="chunk"):
        batch = photos[i : i + chunk]
        images = [load_image(folder / p["image"], max_side) for p in batch]
        pixels.append(processor.image_processor(images, return_tensors="pt")["pixel_values"].to(torch.float16))
        labels.extend(photo_labels(p) for p in batch)
    return torch.cat(pixels), torch.from_numpy(np.stack(labels))


def vision_tower(model) -> torch.nn.Module:
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    if tower is None:
        raise ConfigError(f"{type(model).__name__} has no vision_tower to pretrain")
    return tower


class TaggingProbe(torch.nn.Module):
    """The tower's LVLM-facing features (layer ``feature_layer``), max-pooled over tokens, to tag logits."""

    def __init__(self, tower: torch.nn.Module, hidden: int, feature_layer: int):
        super().__init__()
        self.tower, self.feature_layer = tower, feature_layer
        self.head = torch.nn.Linear(hidden, len(LABELS))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        return self.head(states[self.feature_layer].max(dim=1).values)


def lr_at(step: int, cfg: VisionPretrainConfig) -> float:
    warmup = max(1, int(cfg.warmup_ratio * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def tagging_scores(probe: TaggingProbe, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> dict:
    """Share of photos whose predicted set is exactly right: kinds, shapes, colors, kinds with positions."""
    probe.eval()
    pred = torch.cat([(probe(pixels[i : i + batch_size].float()) > 0).float() for i in range(0, len(pixels), batch_size)])
    probe.train()
    n_kinds, n_pos = len(KINDS), len(KINDS) * len(POSITIONS)

    def exact(a, b):
        return round(float((a == b).all(dim=1).float().mean()), 4)

    grid = lambda t: t[:, :n_kinds].reshape(-1, len(COLORS), len(SHAPES))  # noqa: E731
    return {
        "photos": len(pixels),
        "object_set_exact": exact(pred[:, :n_kinds], labels[:, :n_kinds]),
        "shape_set_exact": exact(grid(pred).amax(1), grid(labels).amax(1)),
        "color_set_exact": exact(grid(pred).amax(2), grid(labels).amax(2)),
        "objects_with_positions_exact": exact(pred[:, n_kinds : n_kinds + n_pos], labels[:, n_kinds : n_kinds + n_pos]),
        "background_exact": exact(pred[:, n_kinds + n_pos :], labels[:, n_kinds + n_pos :]),
    }


def _save_checkpoint(path: Path, probe: TaggingProbe, opt, step: int, gen: torch.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"probe": probe.state_dict(), "opt": opt.state_dict(), "step": step, "generator": gen.get_state()}, tmp)
    os.replace(tmp, path)


def pretrain_vision(cfg: VisionPretrainConfig, resume: bool = False) -> Path:
    """Pretrain the tower; returns the final model folder."""
    from tqdm import tqdm

    from cafe_core.loading import load_model_and_processor

    cfg.validate()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    model, processor = load_model_and_processor(cfg.base_model, device="cpu", dtype=torch.float32)
    pixels, labels = load_tagged_photos(cfg.data, processor, cfg.image_max_side)
    probe = TaggingProbe(vision_tower(model), model.config.vision_config.hidden_size, model.config.vision_feature_layer)
    probe.train()
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        probe.load_state_dict(state["probe"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["generator"])
        step = state["step"]
        log.info("resumed pretrain-vision from step %d", step)
        # Rows logged after the checkpoint by the interrupted run are logged again below.
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        atomic_write_text(out / "metrics.jsonl", "".join(r + "\n" for r in rows if r.strip() and json.loads(r)["step"] <= step))
    elif not resume:  # a fresh run: nothing of an older run in out_dir may be resumed or plotted
        ckpt_path.unlink(missing_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    atomic_write_json(out / "config.json", asdict(cfg))
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain-vision", unit="step")
    t0, seen = time.perf_counter(), 0
    with (out / "metrics.jsonl").open("a") as metrics:
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(pixels[idx].float()), labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step + 1}; last good checkpoint: {ckpt_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += cfg.batch_size
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_at(step - 1, cfg):.1e}", img_s=f"{rate:.0f}")
                metrics.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr_at(step - 1, cfg),
                                          "samples_per_s": rate}) + "\n")
                metrics.flush()
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                _save_checkpoint(ckpt_path, probe, opt, step, gen)
    bar.close()
    report = {"config": asdict(cfg), "train": tagging_scores(probe, pixels[:cfg.eval_max_photos], labels[:cfg.eval_max_photos])}
    if cfg.eval_data:
        report["eval"] = tagging_scores(probe, *load_tagged_photos(cfg.eval_data, processor, cfg.image_max_side,
                                                                   cfg.eval_max_photos))
    log.info("pretrain-vision tagging scores: %s", report)
    final, tmp = out / "final", out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    atomic_write_text(tmp / "vision_pretrain.json", json.dumps(report, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    try:
        from .plots import plot_training_curves

        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", title=f"pretrain-vision: {out.name}")
    except Exception as e:  # a missing plot must not lose the trained model
        log.warning("could not plot the training curves: %s", e)
    return final
