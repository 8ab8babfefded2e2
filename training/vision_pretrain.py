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

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data.images import load_image
from data.synth import GROUND_TRUTH_FILE, read_album
from data.queries import COLOR_TAGS, KIND_TAGS, PROBE_LABEL_SETS, SHAPE_TAGS, probe_labels
from data.vocab import COLORS, SHAPES
from data.world import PhotoSpec

from cafe_core.family import LLAVA, family_for

from .checkpoint import publish_folder, truncate_metrics
from .config import ConfigError
from .schedule import lr_factor

log = logging.getLogger(__name__)

# The tags the tower learns to predict: data.queries.PROBE_LABEL_SETS ("kinds", the first recipe, or
# "attributes", where pairs it never saw are built from parts).
KINDS = list(KIND_TAGS)
LABEL_SETS = {name: list(tags) for name, tags in PROBE_LABEL_SETS.items()}
LABELS = LABEL_SETS["kinds"]
LABEL_INDEX = {t: i for i, t in enumerate(LABELS)}
CHECKPOINT = "checkpoint.pt"


@dataclass
class VisionPretrainConfig:
    base_model: str = "tiny:llava-demo"  # tiny:<preset>, a local folder or a hub id (whose tower is trained)
    labels: str = "kinds"  # which tags the tower learns to predict: kinds | attributes (see LABEL_SETS)
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
        if self.labels not in LABEL_SETS:
            raise ConfigError(f"labels={self.labels!r} is not one of {tuple(LABEL_SETS)}")
        for key in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}={getattr(self, key)} must be between 0 and 1")
        return self


def photo_labels(spec: PhotoSpec, labels: str = "kinds") -> np.ndarray:
    """The multi-hot vector of one photo over LABEL_SETS[labels]."""
    names = LABEL_SETS[labels]
    index = {t: i for i, t in enumerate(names)}
    y = np.zeros(len(names), dtype=np.float32)
    for t in probe_labels(spec, labels):
        y[index[t]] = 1.0
    return y


def load_tagged_photos(folder: str | Path, processor, max_side: int, limit: int | None = None, chunk: int = 256,
                       labels: str = "kinds"):
    """(pixel_values float16, labels float32) of a synth folder's photos, through the model's processor."""
    from tqdm import tqdm

    folder = Path(folder)
    if not (folder / GROUND_TRUTH_FILE).exists():
        raise FileNotFoundError(f"{folder / GROUND_TRUTH_FILE} not found: pretrain-vision needs a `python -m data synth` folder")
    album = read_album(folder)
    photos = album.photos[:limit]
    if not photos:
        raise ConfigError(f"{folder / GROUND_TRUTH_FILE} lists no photos")
    pixels, targets = [], []
    for i in tqdm(range(0, len(photos), chunk), desc=f"loading {folder.name}", unit="chunk"):
        batch = photos[i : i + chunk]
        images = [load_image(album.image_path(p), max_side) for p in batch]
        pixels.append(processor.image_processor(images, return_tensors="pt")["pixel_values"].to(torch.float16))
        targets.extend(photo_labels(p.spec, labels) for p in batch)
    return torch.cat(pixels), torch.from_numpy(np.stack(targets))


def vision_tower(model) -> torch.nn.Module:
    """The LLaVA-family tower (pretrain-vision feeds it the processor's fixed-size pixels, one crop a photo)."""
    family = family_for(model.config)
    if family is not LLAVA:
        raise ConfigError(f"pretrain-vision trains LLaVA-family towers; {type(model).__name__} is a {family.name} model")
    return family.vision_encoder(model)


class TaggingProbe(torch.nn.Module):
    """The tower's LVLM-facing features (layer ``feature_layer``), max-pooled over tokens, to tag logits."""

    def __init__(self, tower: torch.nn.Module, hidden: int, feature_layer: int, n_labels: int = len(LABELS)):
        super().__init__()
        self.tower, self.feature_layer = tower, feature_layer
        self.head = torch.nn.Linear(hidden, n_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        return self.head(states[self.feature_layer].max(dim=1).values)


def lr_at(step: int, cfg: VisionPretrainConfig) -> float:
    return cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_ratio, cfg.min_lr_ratio)


def _exact(pred: torch.Tensor, truth: torch.Tensor, names: list[str], keep) -> float:
    cols = [i for i, t in enumerate(names) if keep(t)]
    return round(float((pred[:, cols] == truth[:, cols]).all(dim=1).float().mean()), 4)


@torch.no_grad()
def tagging_scores(probe: TaggingProbe, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                   label_set: str = "kinds") -> dict:
    """Share of photos whose predicted tags are exactly right, per group of tags."""
    probe.eval()
    pred = torch.cat([(probe(pixels[i : i + batch_size].float()) > 0).float() for i in range(0, len(pixels), batch_size)])
    probe.train()
    names = LABEL_SETS[label_set]
    out = {"photos": len(pixels), "background_exact": _exact(pred, labels, names, lambda t: t.startswith("bg:"))}
    if label_set == "kinds":
        grid = lambda t: t[:, :len(KINDS)].reshape(-1, len(COLORS), len(SHAPES))  # noqa: E731
        out.update({
            "object_set_exact": _exact(pred, labels, names, lambda t: t in KINDS),
            "shape_set_exact": round(float((grid(pred).amax(1) == grid(labels).amax(1)).all(dim=1).float().mean()), 4),
            "color_set_exact": round(float((grid(pred).amax(2) == grid(labels).amax(2)).all(dim=1).float().mean()), 4),
            "objects_with_positions_exact": _exact(pred, labels, names, lambda t: "@" in t),
        })
    else:
        out.update({
            "color_set_exact": _exact(pred, labels, names, lambda t: t in COLOR_TAGS),
            "shape_set_exact": _exact(pred, labels, names, lambda t: t in SHAPE_TAGS),
            "objects_with_positions_exact": _exact(pred, labels, names, lambda t: "@" in t),
        })
    return out


def _save_checkpoint(path: Path, probe: TaggingProbe, opt, step: int, gen: torch.Generator) -> None:
    buffer = io.BytesIO()
    torch.save({"probe": probe.state_dict(), "opt": opt.state_dict(), "step": step, "generator": gen.get_state()},
               buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
    pixels, labels = load_tagged_photos(cfg.data, processor, cfg.image_max_side, labels=cfg.labels)
    probe = TaggingProbe(vision_tower(model), model.config.vision_config.hidden_size, model.config.vision_feature_layer,
                         n_labels=len(LABEL_SETS[cfg.labels]))
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
        truncate_metrics(out / "metrics.jsonl", step)  # rows logged after it are logged again below
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
    report = {"config": asdict(cfg), "train": tagging_scores(probe, pixels[:cfg.eval_max_photos],
                                                             labels[:cfg.eval_max_photos], label_set=cfg.labels)}
    if cfg.eval_data:
        eval_set = load_tagged_photos(cfg.eval_data, processor, cfg.image_max_side, cfg.eval_max_photos, labels=cfg.labels)
        report["eval"] = tagging_scores(probe, *eval_set, label_set=cfg.labels)
    log.info("pretrain-vision tagging scores: %s", report)

    def write(folder: Path):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        atomic_write_text(folder / "vision_pretrain.json", json.dumps(report, indent=2) + "\n")

    final = publish_folder(out / "final", write)
    try:
        from .plots import plot_training_curves

        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", title=f"pretrain-vision: {out.name}")
    except Exception as e:  # a missing plot must not lose the trained model
        log.warning("could not plot the training curves: %s", e)
    return final
