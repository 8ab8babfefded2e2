"""Grounded answers a person can trust, on a fresh sample album. Prints one JSON object.

    .venv/bin/python benchmarks/grounded.py                          # shipped model, 300 photos, seed 200
    .venv/bin/python benchmarks/grounded.py --model PATH --n 300 --seed 200 --style varied --out bench.json

The album (data.synth: photos the model never saw) is indexed with the model, then four question sets
go through app.answer.Answerer, the path the app's chat and `ask` take:

- answerable album questions, each naming exactly one photo by its content:
  ``answer_accuracy`` (right answer with the right photo cited first), ``false_refusal_rate``, and the
  links: ``retrieval_top1`` (the right photo retrieved first, before re-ranking),
  ``question_embedding_top1`` (by the question's own embedding), ``first_shown_right_photo``,
  ``reading_given_right_photo`` (the right answer when only the right photo is shown);
- unanswerable ones: the same templates naming a thing no photo of the album shows
  (data.queries.unanswerable_questions): ``refusal_rate``, and ``missing_named_rate`` (the refusal names
  the missing thing);
- off-topic questions (data.queries.OFF_TOPIC_QUESTIONS): ``offtopic_refusal_rate``;
- follow-ups: an album question, then "When was it taken?" / "What color is the background?" / "How
  many objects are in it?": ``followup_accuracy`` (of the conversations whose first answer cited a photo,
  right for that photo and citing it; ``followup_all_accuracy`` over all of them, a refused first question
  counting as a miss) and ``followup_end_to_end_accuracy`` (right for the photo the first question meant).

Time: ``seconds_per_answer``; with the evidence check on, each answerable question is also answered
without it right after (``seconds_per_answer_without_check``), and ``check_cost`` is the ratio of the
two, measured in the same run.

Each wrong answerable question is attributed to the first link that failed: "refused" (the evidence
check or the threshold turned every photo down), "retrieval" (the right photo was not shown),
"citation" (shown, not cited first) or "reading" (cited first, wrong answer).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import apply_quiet_env  # noqa: E402
from benchmarks.report import emit  # noqa: E402

_CITATION = re.compile(r"\[\d+\]")


def normalise(text: str) -> str:
    """Lowercase, citations and punctuation removed, single spaces."""
    text = _CITATION.sub(" ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text).split())


def rate(count: float, n: int) -> float:
    return round(count / max(1, n), 4)


def parse_args(argv):
    from app.config import AnswerConfig

    defaults = AnswerConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped demo model)")
    p.add_argument("--n", type=int, default=300, help="photos in the album (default %(default)s)")
    p.add_argument("--seed", type=int, default=200, help="album seed (default %(default)s; calibration uses 300)")
    p.add_argument("--split", default="test")
    p.add_argument("--style", default="plain", choices=("plain", "varied", "mixed"), help="how the photos are drawn")
    p.add_argument("--max-questions", type=int, default=None, help="ask at most this many album questions")
    p.add_argument("--unanswerable", type=int, default=100, help="unanswerable questions (default %(default)s)")
    p.add_argument("--followups", type=int, default=60, help="follow-up conversations (default %(default)s)")
    p.add_argument("--work", help="keep the album and database here (default: a temp folder)")
    p.add_argument("--defaults", action="store_true", help="app.config defaults instead of the model's calibration")
    for name in ("k", "min_score", "max_context", "context_margin", "rerank_top", "rerank_weight", "min_yes",
                 "min_attribute", "min_size_margin", "evidence_top"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, name)), default=None,
                       help=f"AnswerConfig.{name} (default: the model's calibrated value)")
    p.add_argument("--no-check", action="store_true", help="answer without the evidence check")
    p.add_argument("--no-decompose", action="store_true", help="retrieve by the question's embedding alone")
    p.add_argument("--examples", type=int, default=8, help="wrong answers to include in the report")
    p.add_argument("--out", help="also write the JSON report here")
    return p.parse_args(argv)


def build(args):
    """(album folder, its ground truth, model, index, answerer, config, index report, index seconds)."""
    from app.answer import Answerer
    from app.calibration import model_settings
    from app.config import resolve_model
    from app.demo import ensure_album
    from app.index import PhotoIndex
    from app.model import load_model

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-grounded-"))
    photos = ensure_album(work / "album", n=args.n, seed=args.seed, split=args.split, style=args.style)
    model = load_model(resolve_model(args.model))
    index = PhotoIndex.open(db=work / "db", model=model, create=True)
    t0 = time.perf_counter()
    report = index.update([photos])
    index_s = time.perf_counter() - t0
    settings = model_settings(model, calibrate=not args.defaults)
    overrides = {n: getattr(args, n) for n in ("k", "min_score", "max_context", "context_margin", "rerank_top",
                                               "rerank_weight", "min_yes", "min_attribute", "min_size_margin",
                                               "evidence_top")
                 if getattr(args, n) is not None}
    config = dataclasses.replace(settings.answer, check_evidence=not args.no_check, decompose=not args.no_decompose,
                                 **overrides)
    return (work / "album", photos, model, index, Answerer(model, index, config, vocab=settings.vocab), config,
            report, index_s)


def answerable(answerer, index, photos, questions, n_examples):
    """Per-question rows and aggregates for the album questions (see module doc)."""
    from app.search import indexed_hit, search

    totals, by_type, failures, examples = Counter(), defaultdict(Counter), Counter(), []
    answering = unchecked = 0.0
    checked = answerer.config
    without_check = dataclasses.replace(checked, check_evidence=False)
    for q in questions:
        right = q.photo_ids[0]
        top = answerer.retrieve(q.question, k=1)
        plain = search(answerer.index, text=q.question, k=1)
        t0 = time.perf_counter()
        result = answerer.answer(q.question)
        answering += time.perf_counter() - t0
        if checked.check_evidence:  # the same question without the check, right after: the check's cost
            answerer.config = without_check
            t0 = time.perf_counter()
            answerer.answer(q.question)
            unchecked += time.perf_counter() - t0
            answerer.config = checked
        shown = [Path(s.path).stem for s in sorted(result.sources, key=lambda s: s.n or 0)]
        first = Path(result.sources[0].path).stem if result.sources and result.sources[0].cited else None
        row = {
            "retrieval_top1": bool(top) and Path(top[0].path).stem == right,
            "question_embedding_top1": bool(plain) and Path(plain[0].path).stem == right,
            "first_shown": bool(shown) and shown[0] == right,
            "cited_first": first == right,
            "refused": result.refused,
            "answer_correct": normalise(result.text) == normalise(q.answer),
        }
        row["grounded_correct"] = row["answer_correct"] and row["cited_first"]
        oracle = None
        for oracle in answerer.stream_with_context(q.question, [indexed_hit(index, str(photos / f"{right}.jpg"))]):
            pass
        row["reading_given_right_photo"] = normalise(oracle.text) == normalise(q.answer)
        for key, ok in row.items():
            totals[key] += ok
            by_type[q.qtype][key] += ok
        by_type[q.qtype]["n"] += 1
        if not row["grounded_correct"]:
            link = ("refused" if result.refused else "retrieval" if right not in shown
                    else "citation" if not row["cited_first"] else "reading")
            failures[link] += 1
            if len(examples) < n_examples:
                examples.append({"question": q.question, "expected": q.answer, "photo": right, "answer": result.text,
                                 "shown": shown, "failed_link": link, "missing": result.missing})
    n = len(questions)
    out = {"questions": n, "answer_accuracy": rate(totals["grounded_correct"], n),
           "false_refusal_rate": rate(totals["refused"], n)}
    out.update({k: rate(totals[k], n) for k in ("retrieval_top1", "question_embedding_top1", "answer_correct",
                                                 "reading_given_right_photo")})
    out["first_shown_right_photo"] = rate(totals["first_shown"], n)
    out["cited_first_right_photo"] = rate(totals["cited_first"], n)
    out["failed_link"] = dict(failures)
    out["seconds_per_answer"] = round(answering / max(1, n), 3)
    if checked.check_evidence:
        out["seconds_per_answer_without_check"] = round(unchecked / max(1, n), 3)
        out["check_cost"] = round(answering / max(unchecked, 1e-9), 2)
    out["by_qtype"] = {t: {"n": c["n"], "answer_accuracy": rate(c["grounded_correct"], c["n"]),
                           "reading_given_right_photo": rate(c["reading_given_right_photo"], c["n"])}
                       for t, c in sorted(by_type.items())}
    return out, examples


def refusals(answerer, questions):
    """refusal_rate and missing_named_rate over questions that must be refused."""
    from data.queries import a

    refused = named = 0
    wrong = []
    for q in questions:
        result = answerer.answer(q.question)
        refused += result.refused
        wanted = {a(f"{z + ' ' if z else ''}{c} {s}") for c, s, z in q.refers_to}
        named += result.refused and bool(set(result.missing) & wanted)
        if not result.refused and len(wrong) < 5:
            wrong.append({"question": q.question, "answer": result.text})
    n = len(questions)
    return {"questions": n, "refusal_rate": rate(refused, n), "missing_named_rate": rate(named, n),
            "answered_examples": wrong}


def offtopic(answerer, questions, after=None):
    """offtopic_refusal_rate: off-topic questions refused. ``after``: (question, its Answer) asked first, so
    each off-topic question comes in a conversation that has a photo to follow up on."""
    from app.answer import Turn

    history = [Turn.of(after[1])] if after else []
    answered = [q for q in questions if not answerer.answer(q, history=history).refused]
    return {"questions": len(questions), "offtopic_refusal_rate": rate(len(questions) - len(answered), len(questions)),
            "answered": answered}


def followups(answerer, conversations, specs):
    """followup_accuracy: of the conversations whose first answer cited a photo (a refused first question
    leaves nothing to follow; false_refusal_rate counts those), the follow-ups answered right for that photo,
    citing it; followup_all_accuracy: the same over every conversation; end to end: right for the photo the
    first question meant."""
    from app.answer import Turn
    from data.queries import followup_answer

    by_id = {s.id: s for s in specs}
    ok = end_to_end = followable = 0
    for c in conversations:
        first = answerer.answer(c["first"])
        history = [Turn.of(first)]
        second = answerer.answer(c["followup"], history=history)
        cited_before = [Path(p).stem for p in history[0].photos]
        cited_now = [Path(p).stem for p in second.cited_paths or [s.path for s in second.sources if s.cited]]
        right_photo = cited_before[:1] == cited_now[:1] and bool(cited_now)
        followed = cited_before[0] if cited_before and cited_before[0] in by_id else None
        truth = followup_answer(by_id[followed], c["followup"]) if followed else None
        followable += truth is not None
        ok += right_photo and truth is not None and normalise(second.text) == normalise(truth)
        end_to_end += cited_now[:1] == [c["photo_id"]] and normalise(second.text) == normalise(c["answer"])
    n = len(conversations)
    return {"conversations": n, "first_answer_cited": followable, "followup_accuracy": rate(ok, followable),
            "followup_all_accuracy": rate(ok, n), "followup_end_to_end_accuracy": rate(end_to_end, n)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_quiet_env()
    from data.queries import OFF_TOPIC_QUESTIONS, followup_questions, unanswerable_questions
    from data.synth import read_album

    started = time.perf_counter()
    album_dir, photos, model, index, answerer, config, report, index_s = build(args)
    album = read_album(album_dir)
    specs = [p.spec for p in album.photos]
    questions = list(album.questions[: args.max_questions])
    rng = random.Random(f"bench-grounded:{args.seed}")
    main_set, examples = answerable(answerer, index, photos, questions, args.examples)
    missing = refusals(answerer, unanswerable_questions(specs, rng, args.unanswerable))
    off = offtopic(answerer, list(OFF_TOPIC_QUESTIONS))
    # The same off-topic questions, each asked right after an answered album question (a photo to follow up on).
    first = next((q.question for q in questions if not answerer.answer(q.question).refused), None)
    off_after = offtopic(answerer, list(OFF_TOPIC_QUESTIONS), (first, answerer.answer(first))) if first else None
    follow = followups(answerer, followup_questions(specs, rng.sample(questions, min(args.followups, len(questions))),
                                                    rng), specs)
    out = {
        "model": model.name, "fingerprint": model.fingerprint,
        "album": {"photos": report.total, "seed": args.seed, "split": args.split, "style": args.style,
                  "skipped": len(report.skipped)},
        "config": {k: getattr(config, k) for k in ("k", "min_score", "max_context", "context_margin", "rerank_top",
                                                    "rerank_weight", "decompose", "check_evidence", "evidence_top",
                                                    "min_yes", "min_attribute", "min_size_margin")},
        "answer_accuracy": main_set["answer_accuracy"],
        "false_refusal_rate": main_set["false_refusal_rate"],
        "refusal_rate": missing["refusal_rate"],
        "offtopic_refusal_rate": off["offtopic_refusal_rate"],
        "offtopic_after_answer_refusal_rate": off_after["offtopic_refusal_rate"] if off_after else None,
        "followup_accuracy": follow["followup_accuracy"],
        "answerable": main_set, "unanswerable": missing, "offtopic": off, "offtopic_after_answer": off_after,
        "followups": follow,
        "index_seconds": round(index_s, 1),
        "seconds_per_answer": main_set["seconds_per_answer"],
        "check_cost": main_set.get("check_cost"),
        "total_seconds": round(time.perf_counter() - started, 1),
        "examples_wrong": examples,
    }
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
