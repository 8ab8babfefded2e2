"""How does the model miss "What is on the left / in the middle / on the right?"? Prints JSON.

    .venv/bin/python benchmarks/position_misses.py                # shipped model, runs/demo-data/test
    .venv/bin/python benchmarks/position_misses.py --model PATH --data ALBUM --max-photos 400

Asks every slot of every photo (the training eval samples 50 of them) and sorts each greedy answer into:
``exact``; ``object_for_empty_slot`` (the slot is empty, the answer names an object); ``nothing_for_full_slot``;
``other_object`` (an object of the photo, from another slot); ``wrong_size`` (the slot's color and shape, the
other size); ``other_object_wrong_size``; ``not_in_photo`` (anything else). Counts overall and per slot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from data.formats import relative_path  # noqa: E402
from data.world import NOTHING_ANSWER, POSITION_QUESTIONS, object_phrase  # noqa: E402

KINDS = ("exact", "object_for_empty_slot", "nothing_for_full_slot", "other_object", "wrong_size",
         "other_object_wrong_size", "not_in_photo")


def miss_kind(answer: str, spec, position: str) -> str:
    """The KINDS entry of ``answer`` to "what is at ``position``" about the photo ``spec``."""
    from training.eval_metrics import normalize_answer

    a = normalize_answer(answer)
    by_pos = {o.position: o for o in spec.objects}
    truth = by_pos.get(position)
    if a == normalize_answer(object_phrase(truth) if truth else NOTHING_ANSWER):
        return "exact"
    if truth is None:
        return "object_for_empty_slot"
    if a == normalize_answer(NOTHING_ANSWER):
        return "nothing_for_full_slot"
    if a in {normalize_answer(object_phrase(o)) for o in spec.objects}:
        return "other_object"
    words = a.split()

    def same_kind(o) -> bool:
        return o.color in words and any(w.rstrip("s") == o.shape for w in words)

    if same_kind(truth):
        return "wrong_size"
    if any(same_kind(o) for o in spec.objects):
        return "other_object_wrong_size"
    return "not_in_photo"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data/test", help="a `python -m data synth` folder")
    p.add_argument("--max-photos", type=int, default=400)
    p.add_argument("--max-side", type=int, default=128)
    args = p.parse_args(argv)
    apply_quiet_env()
    from app.config import resolve_model
    from cafe_core import CafeModel
    from data.images import load_image
    from data.synth import read_album

    path = resolve_model(args.model)
    model = CafeModel.load(path, device="auto")
    album = read_album(Path(args.data))
    overall, per_slot = Counter(), {pos: Counter() for pos in POSITION_QUESTIONS}
    for photo in album.photos[:args.max_photos]:
        image = load_image(album.image_path(photo), args.max_side)
        for pos, question in POSITION_QUESTIONS.items():
            kind = miss_kind(model.generate(question, [image], max_new_tokens=12), photo.spec, pos)
            overall[kind] += 1
            per_slot[pos][kind] += 1
    total = sum(overall.values())
    out = {"model": relative_path(path, REPO), "data": args.data, "questions": total,
           "accuracy": round(overall["exact"] / max(1, total), 4),
           "counts": {k: overall[k] for k in KINDS},
           "per_slot": {pos: {k: c[k] for k in KINDS} for pos, c in per_slot.items()}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
