"""Does the embedding see shapes, or only colors? Prints JSON.

    .venv/bin/python benchmarks/embedding_probe.py                       # shipped model, test split
    .venv/bin/python benchmarks/embedding_probe.py --model PATH --data runs/demo-data/test

Text side: cosine distance (1 - cos) between the embeddings of object queries that differ only in the
shape word ("a red circle" vs "a red square"), only in the color word ("a red circle" vs "a blue circle"),
or by a missing shape word ("a red" vs "a red circle"); means over every seen (color, shape) pair.
Image side, on the split's one-object photos: mean cosine of pairs with the same kind, the same color but
another shape, the same shape but another color; and how often a photo's nearest neighbour among photos of
its color has its shape (chance is about 1/3). `t2i_object_recall@1` (training eval) can only pass when
both sides separate shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from data.vocab import COLORS, SEEN_PAIRS, SHAPES  # noqa: E402


def text_side(model) -> dict:
    queries = [f"a {c} {s}" for c, s in SEEN_PAIRS]
    color_only = [f"a {c}" for c in COLORS]
    emb = dict(zip(queries + color_only, model.embed_texts(queries + color_only)))

    def dist(a: str, b: str) -> float:
        return 1.0 - float(emb[a] @ emb[b])

    seen = set(SEEN_PAIRS)
    shape_changed = [dist(f"a {c} {s}", f"a {c} {t}") for c in COLORS for s, t in combinations(SHAPES, 2)
                     if (c, s) in seen and (c, t) in seen]
    color_changed = [dist(f"a {c} {s}", f"a {d} {s}") for s in SHAPES for c, d in combinations(COLORS, 2)
                     if (c, s) in seen and (d, s) in seen]
    shape_dropped = [dist(f"a {c} {s}", f"a {c}") for c, s in SEEN_PAIRS]
    return {"text_dist_shape_changed": float(np.mean(shape_changed)),
            "text_dist_color_changed": float(np.mean(color_changed)),
            "text_dist_shape_dropped": float(np.mean(shape_dropped))}


def image_side(model, folder: Path, max_side: int) -> dict:
    from data.images import load_image
    from data.synth import read_album

    album = read_album(folder)
    photos = [p for p in album.photos if len(p.spec.objects) == 1]
    kinds = [p.spec.objects[0].pair for p in photos]
    emb = model.embed_images([load_image(album.image_path(p), max_side) for p in photos])
    sim = emb @ emb.T
    same, shape_diff, color_diff = [], [], []
    for i, j in combinations(range(len(photos)), 2):
        (ci, si), (cj, sj) = kinds[i], kinds[j]
        (same if (ci, si) == (cj, sj) else shape_diff if ci == cj else color_diff if si == sj else []).append(sim[i, j])
    hits = n = 0
    for i, (c, s) in enumerate(kinds):
        pool = [j for j in range(len(photos)) if j != i and kinds[j][0] == c]
        if len({kinds[j][1] for j in pool}) < 2:
            continue
        n += 1
        hits += kinds[max(pool, key=lambda j: sim[i, j])][1] == s
    return {"one_object_photos": len(photos),
            "image_cos_same_kind": float(np.mean(same)),
            "image_cos_same_color_other_shape": float(np.mean(shape_diff)),
            "image_cos_same_shape_other_color": float(np.mean(color_diff)),
            "image_shape_nn_accuracy_within_color": round(hits / max(1, n), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data/test", help="a `python -m data synth` folder")
    p.add_argument("--max-side", type=int, default=128)
    args = p.parse_args(argv)
    apply_quiet_env()
    from app.config import resolve_model
    from cafe_core import CafeModel

    path = resolve_model(args.model)
    model = CafeModel.load(path, device="auto")
    out = {"model": path, **text_side(model), **image_side(model, Path(args.data), args.max_side)}
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
