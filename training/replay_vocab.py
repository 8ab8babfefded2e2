"""Rebuild a model's ``training_vocab.json`` from its recipe, for a model trained before the trainer wrote one.

Each stage's config is replayed without a model: the same data, seed, order and augmentation as the
trainer (training.trainer.sample_batches), for as many batches as the stage trained, and every text of
those batches is counted the way the trainer counts them. Stages that train on labels only (pretrain-vision)
have no texts and are skipped.

    python -m training.replay_vocab models/cafe-tiny-sampleworld training/configs/demo-stage{1..5}-*.yaml
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from cafe_core.vocab import WordCounts
from data.dataset import open_dataset

from .config import TrainConfig, load_config
from .sampleworld import SampleWorldAugment
from .trainer import batch_texts, sample_batches


def replay(cfg: TrainConfig) -> WordCounts:
    """The words of every text one single-process stage trained on (grad_accum micro-batches per step)."""
    dataset = open_dataset(cfg.data, max_side=cfg.image_max_side)
    augment = SampleWorldAugment(cfg.data, cfg.seed, cfg.recipe()) if cfg.augment == "sampleworld" else None
    steps = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    if steps <= 0:
        raise ValueError(f"{cfg.out_dir}: replay needs max_steps (an epochs-based run's length depends on the data)")
    counts = WordCounts()
    for chunk, _ in itertools.islice(sample_batches(dataset, augment, cfg.batch_size, cfg.seed), steps * cfg.grad_accum):
        counts.update(batch_texts(chunk))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="model folder to write training_vocab.json into")
    p.add_argument("configs", nargs="+", help="the stages' training configs, in order")
    args = p.parse_args(argv)
    total = WordCounts()
    for path in args.configs:
        cfg = load_config(Path(path), cls=TrainConfig)
        counts = replay(cfg)
        print(f"{path}: {counts.texts} texts, {len(counts.counts)} words")
        total = total.merge(counts)
    print(total.save(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
