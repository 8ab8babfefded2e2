"""Can a reader like ours find "the left" in these image tokens at all? Prints JSON.

    .venv/bin/python benchmarks/reader_probe.py --model runs/demo-v5-stage3/final \
        --fit runs/demo-data/train --data runs/demo-data/test --orders raster,column,shuffled

``spatial_probe.py`` showed the place is in the tokens (slot-pooled probes, one token's column) while the
model answers "What is on the left?" at 0.38. This isolates the reader: it freezes the model's image
tokens (the projector's outputs, what the language model reads), and trains a fresh language-model stack
of the model's own shape (same transformers class and text config: layers, heads, 1-D RoPE) on one task,
"which object is in slot s?", as a 49-way choice (size color shape, or empty) read at a slot query token
that follows the image tokens, as the question does in the real model. The image tokens are fed in one of
three orders:

* ``raster``: row by row, as the language model sees them (a column third is 4 tokens of every row);
* ``column``: column by column (a column third is one contiguous block of the sequence);
* ``shuffled``: a fresh random order per photo (only what each token's content says about its place is left).

Reading: a high ``raster`` score means the reader's shape can ground positions and the joint recipe just
does not teach it; ``raster`` far below ``column`` means the raster order is what the reader cannot use;
``shuffled`` near ``raster`` means the reader finds the place by content, not by position.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from benchmarks.spatial_probe import add_album_arguments, token_grids  # noqa: E402
from data.formats import relative_path  # noqa: E402
from data.vocab import COLORS, POSITION_QUESTIONS, POSITIONS, SHAPES, SIZES  # noqa: E402

EMPTY = "empty"
CLASSES = (EMPTY,) + tuple(f"{z} {c} {s}" for z in SIZES for c in COLORS for s in SHAPES)
ORDERS = ("raster", "column", "shuffled")


def album_tokens(model, folder: Path, max_photos: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(photos, g, g, d) projector outputs and (photos, 3) class ids of each slot's content."""
    from data.images import load_image
    from data.synth import read_album

    album = read_album(folder)
    grids, labels = [], []
    for photo in album.photos[:max_photos]:
        grids.append(token_grids(model, load_image(album.image_path(photo), max_side))["projector"].astype(np.float16))
        by_pos = {o.position: o for o in photo.spec.objects}
        labels.append([CLASSES.index(EMPTY if (o := by_pos.get(p)) is None else f"{o.size} {o.color} {o.shape}")
                       for p in POSITIONS])
    return np.stack(grids), np.array(labels)


def ordered(grids, order: str, generator):
    """(n, g*g, d) sequences of (n, g, g, d) grids in the given order."""
    import torch

    n, g, _, d = grids.shape
    if order == "raster":
        return grids.reshape(n, g * g, d)
    if order == "column":
        return grids.transpose(1, 2).reshape(n, g * g, d)
    perm = torch.stack([torch.randperm(g * g, generator=generator) for _ in range(n)])
    return torch.gather(grids.reshape(n, g * g, d), 1, perm[..., None].expand(-1, -1, d))


def question_prompts(model) -> tuple[list[int], list[list[int]]]:
    """The model's own prompt for "What is on the <slot>?", as token ids around the image: (before, after per slot)."""
    from cafe_core.prompts import IMAGE_PLACEHOLDER, generation_prompt

    tok = model.processor.tokenizer
    before, after = None, []
    for pos in POSITIONS:
        head, tail = generation_prompt(POSITION_QUESTIONS[pos], 1, chat=model.chat).split(IMAGE_PLACEHOLDER)
        before = tok(head, add_special_tokens=False)["input_ids"]
        after.append(tok(tail, add_special_tokens=False)["input_ids"])
    return before, after


class Reader:
    """A language-model stack of the model's text config (fresh, or the model's own), a 49-way head, and a
    slot query: one learned vector after the image tokens, or the model's own question prompt around them."""

    def __init__(self, text_config, seed: int, body=None, prompts=None):
        import torch
        from transformers import AutoModel

        torch.manual_seed(seed)
        self.body = AutoModel.from_config(text_config) if body is None else body
        d = text_config.hidden_size
        self.queries = torch.nn.Embedding(len(POSITIONS), d)
        self.head = torch.nn.Linear(d, len(CLASSES))
        self.modules = torch.nn.ModuleList([self.body, self.queries, self.head])
        self.prompts = prompts  # (before ids, [after ids per slot]) or None

    def logits(self, seq, slot):
        import torch

        if self.prompts is None:
            x = torch.cat([seq, self.queries(slot)[:, None]], dim=1)
        else:
            embed = self.body.get_input_embeddings()
            before, after = self.prompts
            b = embed(torch.tensor(before))[None].expand(len(seq), -1, -1)
            a = embed(torch.tensor([after[s] for s in slot.tolist()]))  # every slot's prompt has the same length
            x = torch.cat([b, seq, a], dim=1)
        h = self.body(inputs_embeds=x).last_hidden_state[:, -1]
        return self.head(h)


def train_reader(text_config, fit_x, fit_y, test_x, test_y, order: str, steps: int, batch: int, lr: float,
                 seed: int, body=None, prompts=None) -> dict:
    """Train one reader on (photo, slot) pairs of the fit album; accuracy on every slot of the test album.
    ``body``: the language-model stack to start from (default: a fresh one of ``text_config``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    reader = Reader(text_config, seed, body, prompts)
    opt = torch.optim.AdamW(reader.modules.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    # a fresh stack reads tokens at unit RMS, like a normed embedding; the model's own reads them as they are
    scale = fit_x.float().pow(2).mean().sqrt() if body is None else torch.tensor(1.0)
    curve, start = [], time.perf_counter()
    reader.modules.train()
    for step in range(steps):
        rows = torch.randint(len(fit_x), (batch,), generator=gen)
        slot = torch.randint(len(POSITIONS), (batch,), generator=gen)
        seq = ordered(fit_x[rows].float() / scale, order, gen)
        loss = torch.nn.functional.cross_entropy(reader.logits(seq, slot), fit_y[rows, slot])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.modules.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
    reader.modules.eval()
    right = total = 0
    with torch.no_grad():
        for i in range(0, len(test_x), 100):
            seq = ordered(test_x[i:i + 100].float() / scale, order, gen)
            for s in range(len(POSITIONS)):
                slot = torch.full((len(seq),), s)
                right += (reader.logits(seq, slot).argmax(1) == test_y[i:i + 100, s]).sum().item()
                total += len(seq)
    window = max(1, steps // 10)
    return {"slot_accuracy": round(right / total, 4), "test_slots": total,
            "loss_by_tenth": [round(float(np.mean(curve[i:i + window])), 4) for i in range(0, steps, window)],
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_album_arguments(p, fit="runs/demo-data/train", max_fit=4000)
    p.add_argument("--orders", default=",".join(ORDERS), help="comma-separated (default %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per order (default %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="(photo, slot) pairs per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, cosine (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--init", choices=("fresh", "model"), default="fresh",
                   help="the reader's stack: fresh, or a copy of the model's own language model (default %(default)s)")
    p.add_argument("--query", choices=("learned", "question"), default="learned",
                   help="the slot query: one learned vector after the image, or the model's own question prompt "
                        "(default %(default)s)")
    args = p.parse_args(argv)
    orders = args.orders.split(",")
    if bad := set(orders) - set(ORDERS):
        p.error(f"unknown order(s) {sorted(bad)}; choose from {ORDERS}")
    apply_quiet_env()
    import torch

    from app.config import resolve_model
    from cafe_core import CafeModel

    path = resolve_model(args.model)
    model = CafeModel.load(path, device="cpu")
    fit_x, fit_y = album_tokens(model, Path(args.fit), args.max_fit, args.max_side)
    test_x, test_y = album_tokens(model, Path(args.data), args.max_photos, args.max_side)
    text_config = model.model.config.text_config
    counts = np.bincount(fit_y.ravel(), minlength=len(CLASSES))
    out: dict = {"model": relative_path(path, REPO), "fit_photos": len(fit_x), "grid": list(fit_x.shape[1:3]),
                 "reader": {"layers": text_config.num_hidden_layers, "hidden": text_config.hidden_size,
                            "heads": text_config.num_attention_heads, "kv_heads": text_config.num_key_value_heads},
                 "init": args.init, "query": args.query, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                 "majority_slot_accuracy": round(float(np.mean(test_y == counts.argmax())), 4), "orders": {}}
    fx, fy = torch.from_numpy(fit_x), torch.from_numpy(fit_y)
    tx, ty = torch.from_numpy(test_x), torch.from_numpy(test_y)
    for order in orders:
        body = None if args.init == "fresh" else copy.deepcopy(model.family.language_model(model.model)).float()
        out["orders"][order] = train_reader(text_config, fx, fy, tx, ty, order, args.steps, args.batch, args.lr,
                                            args.seed, body, question_prompts(model) if args.query == "question" else None)
        print(json.dumps({order: out["orders"][order]}), file=sys.stderr, flush=True)
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
