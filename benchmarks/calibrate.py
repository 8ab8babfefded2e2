"""Calibrate a model's app settings on calibration albums; print them (and what they measure) as JSON.

    .venv/bin/python benchmarks/calibrate.py                          # shipped model, seeds 300 301 302
    .venv/bin/python benchmarks/calibrate.py --model PATH --write      # -> PATH/app_calibration.json

Scores are model-specific, so every threshold and weight the app uses is measured here, on albums the
model never saw and that no report uses (seeds 300-302, 300 photos each; reports use seed 200), and
stored with the model (app/calibration.py applies it whenever that model is loaded). Three albums, not
one: refusal and false-refusal rates move by several points from one 300-photo album to the next, and
settings fitted to one album's luck do not hold on the next (fitted on two albums, checked on the third,
the previous constraints gave false refusals up to 0.11 on the held-out album, these up to 0.06).

- search.min_text_score (from the first album): the relevance cutoff of text searches. Queries naming
  one object ("a red circle") and two ("a red circle and a blue star"); a photo is relevant when it shows
  everything the query names; the cutoff that maximises F1 over each query's 40 best photos.
- search.min_image_score: the same for "more like this" (relevant: shares an object kind).
- search.composed_text_weight: photo + "on a white background" (relevant: shares a kind with the photo
  and has that background); the weight with the best precision@5.
- answer.rerank_weight, min_yes, min_attribute, min_size_margin: every album question (answerable) and as many
  that name a missing thing (unanswerable) go through retrieval and re-ranking once; the evidence of
  the best candidates is recorded; the settings are then chosen by replaying the decision rule: the
  first candidate that passes is shown. Objective: the right photo shown first on answerable questions,
  subject to refusing at least --min-refusal of the unanswerable ones and at most --max-false-refusal
  of the answerable ones (where no setting meets both, the best of right + refusal - 2 x the false
  refusals over the limit).
- answer.min_score: just below the lowest best score any answerable question gets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from benchmarks.report import emit  # noqa: E402

TOP = 40  # photos looked at per search query
MIN_YES_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_ATTRIBUTE_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SIZE_MARGIN_GRID = (-1e9, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0)
RERANK_GRID = (0.0, 0.005, 0.01, 0.013, 0.02, 0.05)
TEXT_WEIGHT_GRID = (0.5, 1.0, 1.5, 2.0, 3.0)


def best_cutoff(scores: list[float], relevant: list[bool]) -> tuple[float, float]:
    """(cutoff, F1) maximising F1 of "score >= cutoff" against ``relevant``."""
    order = np.argsort(-np.asarray(scores))
    s, r = np.asarray(scores)[order], np.asarray(relevant)[order]
    tp = np.cumsum(r)
    precision, recall = tp / np.arange(1, len(r) + 1), tp / max(1, r.sum())
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    i = int(np.argmax(f1))
    cutoff = float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i] - 1e-4)
    return round(cutoff, 4), round(float(f1[i]), 4)


def search_settings(index, specs, paths_by_id) -> dict:
    from app.search import search, search_vector
    from data.queries import image_tags, matches, objects_query, object_query

    kinds = sorted({o.pair for s in specs for o in s.objects})
    objects = {o.pair: o for s in specs for o in s.objects}
    queries = [object_query(objects[k]) for k in kinds]
    pairs = [objects_query(list(s.objects[:2])) for s in specs if len(s.objects) >= 2][:40]
    tags = {s.id: image_tags(s) for s in specs}
    text_scores, text_rel = [], []
    for q in queries + pairs:
        for h in search(index, text=q.text, k=TOP):
            text_scores.append(h.score)
            text_rel.append(matches(q.tags, tags[Path(h.path).stem]))
    min_text, f1_text = best_cutoff(text_scores, text_rel)

    by_id = {s.id: s for s in specs}
    rng = random.Random("calibrate:image")
    probes = rng.sample(specs, min(40, len(specs)))
    stored = index.store.vectors([_id(paths_by_id[s.id]) for s in probes])
    img_scores, img_rel = [], []
    for s in probes:
        kinds_s = {o.pair for o in s.objects}
        for h in search_vector(index, stored[_id(paths_by_id[s.id])], k=TOP + 1):
            other = Path(h.path).stem
            if other == s.id:
                continue
            img_scores.append(h.score)
            img_rel.append(bool(kinds_s & {o.pair for o in by_id[other].objects}))
    min_image, f1_image = best_cutoff(img_scores, img_rel)

    weights = {}
    for w in TEXT_WEIGHT_GRID:
        hits_at_5 = []
        for s in probes[:20]:
            for bg in ("white", "black", "gray"):
                if bg == s.background:
                    continue
                found = search(index, text=f"on a {bg} background", image=paths_by_id[s.id], k=6, text_weight=w)
                found = [h for h in found if Path(h.path).stem != s.id][:5]
                hits_at_5 += [by_id[Path(h.path).stem].background == bg and bool(
                    {o.pair for o in s.objects} & {o.pair for o in by_id[Path(h.path).stem].objects}) for h in found]
        weights[w] = round(float(np.mean(hits_at_5)), 4)
    weight = max(weights, key=lambda w: (weights[w], -abs(w - 1.0)))
    return {"settings": {"min_text_score": min_text, "min_image_score": min_image, "composed_text_weight": weight},
            "measured": {"text_cutoff_f1": f1_text, "image_cutoff_f1": f1_image,
                         "composed_precision_at_5": weights}}


def _id(path: str) -> str:
    from app.store import photo_id

    return photo_id(str(Path(path).resolve()))


def collect_evidence(answerer, questions, parts_of, top: int) -> list[dict]:
    """Per question: the re-ranking inputs and the evidence of the best ``top`` retrieved photos (the ones
    the answerer would weigh; a photo that cannot be read is left out, as the answerer does)."""
    out = []
    for q in questions:
        parts = parts_of(q)
        hits = answerer.retrieve(q.question, parts=parts)
        head = hits[:top]
        logp = answerer.description_logprob(q.question, head, parts)
        evidence = answerer.check(parts, head, complete=True)
        out.append({"right": q.photo_ids[0] if q.photo_ids else None, "top_score": hits[0].score if hits else None,
                    "candidates": [{"id": Path(h.path).stem, "score": h.score, "logp": lp, "p_yes": e.p_yes,
                                    "size": e.size_margin, "attribute": e.p_attribute}
                                   for h, lp, e in zip(head, logp, evidence) if lp is not None and e is not None]})
    return out


def decide(record: dict, min_score: float, weight: float, min_yes: float, min_size: float, min_attr: float,
           top: int):
    """The photo shown first under these settings (the answerer's rule: app.answer.Answerer._ranked, then
    app.evidence.part_passes for every named thing, best candidate first), or None for a refusal."""
    from app.evidence import part_passes

    cands = [c for c in record["candidates"] if c["score"] >= min_score]
    if not cands:
        return None
    best = max(c["logp"] for c in cands)
    ranked = sorted(cands, key=lambda c: -(c["score"] + weight * (c["logp"] - best)))[:top]
    for c in ranked:
        if all(part_passes(p, m, a, min_yes, min_size, min_attr) for p, m, a in zip(c["p_yes"], c["size"], c["attribute"])):
            return c["id"]
    return None


def answer_settings(answerable, unanswerable, min_score, top, min_refusal, max_false) -> dict:
    table = []
    grid = itertools.product(RERANK_GRID, MIN_YES_GRID, SIZE_MARGIN_GRID, MIN_ATTRIBUTE_GRID)
    for weight, min_yes, min_size, min_attr in grid:
        shown = [decide(r, min_score, weight, min_yes, min_size, min_attr, top) for r in answerable]
        right = np.mean([s == r["right"] for s, r in zip(shown, answerable)])
        false_refusal = np.mean([s is None for s in shown])
        refusal = np.mean([decide(r, min_score, weight, min_yes, min_size, min_attr, top) is None
                           for r in unanswerable])
        table.append({"rerank_weight": weight, "min_yes": min_yes, "min_size_margin": min_size,
                      "min_attribute": min_attr,
                      "right_photo_first": round(float(right), 4), "false_refusal_rate": round(float(false_refusal), 4),
                      "refusal_rate": round(float(refusal), 4)})
    feasible = [t for t in table if t["refusal_rate"] >= min_refusal and t["false_refusal_rate"] <= max_false]
    pool = feasible or table
    key = (lambda t: (t["right_photo_first"], t["refusal_rate"])) if feasible else \
        (lambda t: t["right_photo_first"] + t["refusal_rate"] - 2 * max(0.0, t["false_refusal_rate"] - max_false))
    best = max(pool, key=key)
    return {"settings": {k: best[k] for k in ("rerank_weight", "min_yes", "min_size_margin", "min_attribute")},
            "measured": {**{k: best[k] for k in ("right_photo_first", "false_refusal_rate", "refusal_rate")},
                         "feasible_settings": len(feasible), "grid": len(table)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped demo model)")
    p.add_argument("--n", type=int, default=300, help="photos in each calibration album (default %(default)s)")
    p.add_argument("--seed", type=int, nargs="+", default=[300, 301, 302],
                   help="calibration album seeds: one album each, the answer settings fit to all (default %(default)s)")
    p.add_argument("--style", default="plain", choices=("plain", "varied", "mixed"), help="how the photos are drawn")
    p.add_argument("--unanswerable", type=int, default=120, help="unanswerable questions per album (default %(default)s)")
    p.add_argument("--min-refusal", type=float, default=0.9,
                   help="unanswerable questions to refuse, at least (default %(default)s)")
    p.add_argument("--max-false-refusal", type=float, default=0.04,
                   help="answerable questions refused, at most (default %(default)s; set below the app's target of "
                        "0.10, which must hold on albums not calibrated on)")
    p.add_argument("--work", help="keep the album and database here (default: a temp folder)")
    p.add_argument("--write", action="store_true", help="write MODEL/app_calibration.json")
    args = p.parse_args(argv)
    apply_quiet_env()

    import dataclasses

    from app.answer import Answerer
    from app.calibration import CALIBRATION_FILE
    from app.config import AnswerConfig, resolve_model
    from app.demo import ensure_album
    from app.index import PhotoIndex
    from app.model import load_model
    from app.query import referring_parts
    from data.queries import unanswerable_questions
    from data.synth import read_album

    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="calibrate-"))
    model = load_model(resolve_model(args.model))
    if args.write and not Path(model.name).is_dir():
        p.error(f"--write needs a model folder to write {CALIBRATION_FILE} into; {model.name} is not one")
    defaults = AnswerConfig()
    answerable, unanswerable, search = [], [], None
    for seed in args.seed:
        folder = work / f"seed-{seed}"
        photos = ensure_album(folder / "album", n=args.n, seed=seed, split="test", style=args.style)
        album = read_album(folder / "album")
        specs = [a.spec for a in album.photos]
        index = PhotoIndex.open(db=folder / "db", model=model, create=True)
        index.update([photos])
        if search is None:  # search cutoffs from the first album
            paths_by_id = {a.spec.id: str((album.root / a.image).resolve()) for a in album.photos}
            search = search_settings(index, specs, paths_by_id)
        answerer = Answerer(model, index, dataclasses.replace(defaults, min_yes=0.0, min_size_margin=-1e9,
                                                               min_attribute=0.0))
        answerable += collect_evidence(answerer, album.questions, lambda q: referring_parts(q.question),
                                       defaults.evidence_top)
        missing = unanswerable_questions(specs, random.Random(f"calibrate:{seed}"), args.unanswerable)
        unanswerable += collect_evidence(answerer, missing, lambda q: referring_parts(q.question), defaults.evidence_top)
    top_scores = [r["top_score"] for r in answerable if r["top_score"] is not None]
    min_score = round(float(min(top_scores)) - 0.005, 3)
    answer = answer_settings(answerable, unanswerable, min_score, defaults.evidence_top, args.min_refusal,
                             args.max_false_refusal)
    seeds = ", ".join(map(str, args.seed))
    out = {
        "fingerprint": model.fingerprint,
        "model": model.name,
        "calibrated_on": {"album": f"test split, seeds {seeds} (search cutoffs: the first), {args.style}, "
                                   f"{args.n} photos each",
                          "answerable": len(answerable), "unanswerable": len(unanswerable),
                          "command": "benchmarks/calibrate.py " + " ".join(argv if argv is not None else sys.argv[1:])},
        "search": search["settings"],
        "answer": {"min_score": min_score, **answer["settings"]},
        "measured": {"search": search["measured"], "answer": answer["measured"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(out)
    if args.write:
        target = Path(model.name) / CALIBRATION_FILE
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, target)  # atomic: an interrupted run leaves the previous calibration whole
        print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
