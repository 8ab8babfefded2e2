"""How fast can the demo's vision tower learn shapes at a given image size and patch size? Prints JSON.

    .venv/bin/python benchmarks/vision_probe.py --size 96 --patch 12     # the previous demo grid (8x8 = 64 tokens)
    .venv/bin/python benchmarks/vision_probe.py --size 96 --patch 8      # the shipped grid (12x12 = 144 tokens)

A SigLIP vision tower of the `tiny:llava-demo` width/depth (128 x 3, from scratch) plus a linear head on
max-pooled tokens is trained to name which of the 24 (color, shape) kinds each sample-world photo holds
(multi-label), on sample-world train photos, and scored on the test split: the share of photos whose
predicted set of kinds / shapes / colors is exactly right. Photos are squashed to size x size, as the
demo's processor does. This chose the shipped patch size (see cafe_core/tiny.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.images import load_image  # noqa: E402
from data.synth import read_album  # noqa: E402
from data.vocab import COLORS, SHAPES  # noqa: E402


def load_split(folder: Path, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    album = read_album(folder)
    photos = album.photos[:n]
    x = np.zeros((len(photos), 3, size, size), np.float32)
    y = np.zeros((len(photos), len(COLORS) * len(SHAPES)), np.float32)
    for i, p in enumerate(photos):
        img = load_image(album.image_path(p)).resize((size, size), Image.BICUBIC)
        x[i] = np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        for o in p.spec.objects:
            y[i, COLORS.index(o.color) * len(SHAPES) + SHAPES.index(o.shape)] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train", default="runs/demo-data/train", help="a `python -m data synth` folder")
    p.add_argument("--test", default="runs/demo-data/test")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(Path(args.train), args.n_train, args.size)
    x_test, y_test = load_split(Path(args.test), 400, args.size)
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                                                 num_attention_heads=2, image_size=args.size, patch_size=args.patch))
    head = torch.nn.Linear(128, y_train.shape[1])
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3)

    def logits(x):
        return head(tower(pixel_values=x).last_hidden_state.max(dim=1).values)

    started = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_train), (args.batch_size,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        pred = (logits(x_test) > 0).float()

    def exact(a, b):
        return round(float((a == b).all(dim=1).float().mean()), 4)

    grid = lambda t: t.view(-1, len(COLORS), len(SHAPES))  # noqa: E731
    print(json.dumps({
        "size": args.size, "patch": args.patch, "image_tokens": (args.size // args.patch) ** 2, "steps": args.steps,
        "train_seconds": round(seconds, 1), "final_loss": round(loss.item(), 4),
        "object_set_exact": exact(pred, y_test),
        "shape_set_exact": exact(grid(pred).amax(1), grid(y_test).amax(1)),
        "color_set_exact": exact(grid(pred).amax(2), grid(y_test).amax(2)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
