"""Do the image tokens know where things are? Prints JSON.

    .venv/bin/python benchmarks/spatial_probe.py                # shipped model; train7 to fit, test to score
    # the albums: python -m data synth runs/demo-data/train7 --n 8000 --seed 8 --split train --style mixed
    #             python -m data synth runs/demo-data/test --n 400 --seed 3 --split test
    .venv/bin/python benchmarks/spatial_probe.py --model PATH --fit runs/demo-data/train --data runs/demo-data/test

The language model reads a photo as a grid of image tokens (the projector's outputs). For each photo and
each slot (left / middle / right) this pools the tokens of that slot's third of the columns and fits a
linear softmax probe to the slot's content: its object's color, shape or size, or "empty". The control
pools the whole grid instead. A last probe reads, from one token alone, which third of the columns it sits
in: a reader can only find "the left" by content if the tokens carry it (the language model's own 1-D
positions count tokens row by row); ``token_column_accuracy_by_layer`` shows where on the way through the
vision tower and the projector that is lost. Probes are fitted on the --fit album and scored on --data.

Reading: slot-pooled accuracy well above the whole-image control means the vision side keeps location
and a reader that answers "What is on the left?" badly fails to use it; near the control means the
location is lost before the language model. Models whose image tokens are not one square grid per photo
(LLaVA-OneVision's anyres packing) are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from data.formats import relative_path  # noqa: E402
from data.world import POSITIONS  # noqa: E402

EMPTY = "empty"
TARGETS = ("color", "shape", "size")


def token_grids(model, image) -> dict[str, np.ndarray]:
    """(g, g, d) grids of one photo, in raster order: the vision tower's embeddings and each layer's output
    (``layer_<i>``), then the projector's outputs (what the language model reads, ``projector``)."""
    import torch

    hf = model.model
    pixels = model.processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = hf.get_image_features(pixel_values=pixels.to(hf.device, hf.dtype), output_hidden_states=True)
    feats = out.pooler_output[0].reshape(-1, out.pooler_output[0].shape[-1])
    n = len(feats)
    g = int(round(n ** 0.5))
    if g * g != n:
        raise SystemExit(f"{n} image tokens per photo are not one square grid: this probe reads plain LLaVA-style models")
    grids = {}
    for i, h in enumerate(out.hidden_states):
        h = h[0, -n:] if h.shape[1] in (n, n + 1) else None  # a CLS token first (CLIP) is dropped
        if h is not None:
            grids["embeddings" if i == 0 else f"layer_{i}"] = h.float().cpu().numpy().reshape(g, g, -1)
    grids["projector"] = feats.float().cpu().numpy().reshape(g, g, -1)
    return grids


TOKENS_PER_PHOTO = 12  # tokens sampled per photo for the column probe


def column_slot(column: int, g: int) -> int:
    """The slot (0 left, 1 middle, 2 right) a grid column of a g-wide grid belongs to, by its centre."""
    return int((column + 0.5) * 3 / g)


def slot_rows(model, folder: Path, max_photos: int, max_side: int) -> tuple[np.ndarray, np.ndarray, list[dict], dict, list[str]]:
    """Per (photo, slot): the slot's pooled projector outputs, the whole grid's, and the slot's labels;
    then a sample of single tokens, per layer (token_grids' names), with the third of the columns each sits in."""
    from data.images import load_image
    from data.synth import read_album

    album = read_album(folder)
    slot, whole, labels, tokens, columns = [], [], [], {}, []
    rng = np.random.default_rng(0)
    for photo in album.photos[:max_photos]:
        grids = token_grids(model, load_image(album.image_path(photo), max_side))
        grid = grids["projector"]
        g = grid.shape[1]
        slot_of = np.array([column_slot(c, g) for c in range(g)])
        for cell in rng.choice(g * g, min(TOKENS_PER_PHOTO, g * g), replace=False):
            for name, layer in grids.items():
                tokens.setdefault(name, []).append(layer[cell // g, cell % g])
            columns.append(POSITIONS[slot_of[cell % g]])
        by_pos = {o.position: o for o in photo.spec.objects}
        for k, pos in enumerate(POSITIONS):
            slot.append(grid[:, slot_of == k].mean((0, 1)))
            whole.append(grid.mean((0, 1)))
            o = by_pos.get(pos)
            labels.append({t: EMPTY if o is None else getattr(o, t) for t in TARGETS})
    return np.stack(slot), np.stack(whole), labels, {k: np.stack(v) for k, v in tokens.items()}, columns


def probe_accuracy(x_fit: np.ndarray, y_fit: list[str], x_test: np.ndarray, y_test: list[str], l2: float = 1e-3) -> float:
    """Test accuracy of an L2-regularised softmax probe fitted by L-BFGS on standardised features; a test
    label never seen in fitting counts as a miss."""
    import torch

    classes = sorted(set(y_fit))
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    a = torch.tensor((x_fit - mu) / sd, dtype=torch.float32)
    y = torch.tensor([classes.index(v) for v in y_fit])
    w = torch.zeros(a.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.tensor((x_test - mu) / sd, dtype=torch.float32) @ w + b).argmax(1).tolist()
    return float(np.mean([classes[p] == t for p, t in zip(pred, y_test)]))


def majority(y_fit: list[str], y_test: list[str]) -> float:
    """Accuracy of always answering the fit album's most common label."""
    top = max(set(y_fit), key=y_fit.count)
    return float(np.mean([t == top for t in y_test]))


def add_album_arguments(p: argparse.ArgumentParser, fit: str, max_fit: int) -> None:
    """--model, and the albums a probe is fitted on (--fit, --max-fit) and scored on (--data, --max-photos)."""
    p.add_argument("--model", help="model folder whose image tokens are read (default: the shipped demo model)")
    p.add_argument("--fit", default=fit, help="album the probes are fitted on (default %(default)s)")
    p.add_argument("--data", default="runs/demo-data/test", help="album they are scored on (default %(default)s)")
    p.add_argument("--max-fit", type=int, default=max_fit, help="photos of --fit used (default %(default)s)")
    p.add_argument("--max-photos", type=int, default=400, help="photos of --data used (default %(default)s)")
    p.add_argument("--max-side", type=int, default=128, help="longest side photos are read at (default %(default)s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_album_arguments(p, fit="runs/demo-data/train7", max_fit=1500)
    args = p.parse_args(argv)
    apply_quiet_env()
    from app.config import resolve_model
    from cafe_core import CafeModel

    path = resolve_model(args.model)
    model = CafeModel.load(path, device="auto")
    s_fit, w_fit, l_fit, t_fit, c_fit = slot_rows(model, Path(args.fit), args.max_fit, args.max_side)
    s_test, w_test, l_test, t_test, c_test = slot_rows(model, Path(args.data), args.max_photos, args.max_side)
    out: dict = {"model": relative_path(path, REPO), "fit_slots": len(l_fit), "test_slots": len(l_test),
                 "token_column_accuracy": probe_accuracy(t_fit["projector"], c_fit, t_test["projector"], c_test),
                 "majority_column_accuracy": majority(c_fit, c_test),
                 "token_column_accuracy_by_layer": {name: round(probe_accuracy(t_fit[name], c_fit, t_test[name], c_test), 4)
                                                    for name in t_fit}}
    for t in TARGETS:
        y_fit, y_test = [r[t] for r in l_fit], [r[t] for r in l_test]
        out[f"slot_{t}_accuracy"] = probe_accuracy(s_fit, y_fit, s_test, y_test)
        out[f"whole_image_{t}_accuracy"] = probe_accuracy(w_fit, y_fit, w_test, y_test)
        out[f"majority_{t}_accuracy"] = majority(y_fit, y_test)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
