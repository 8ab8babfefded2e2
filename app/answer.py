"""Grounded answers about retrieved photos (multimodal RAG with one CAFe model), checked before they are given.

The same CafeModel instance embeds the question (retrieval through app.search), re-ranks and checks
the best photos with its generator, and reads the photos that pass to answer, citing them as [1], [2]:

    from app.answer import Answerer
    answerer = Answerer(index.model, index)
    result = answerer.answer("What color is the background in the photo with the red circle?")
    result.text        # "gray [1]"
    result.summary     # "gray — in [1] IMG_0186.jpg, 26 May 2017"
    result.sources     # [Source(path=..., score=0.71, n=1, cited=True), ...]

    for partial in answerer.stream(question, history=turns):   # the UI: the text grows
        print(partial.text)

A message is read first (app.query.parse_message):
- a question that names its photo ("... in the photo with the purple star?") retrieves photos that show
  each named thing, re-ranks the best by the generator, and asks the generator whether each candidate
  really shows every named thing (app.evidence). Only photos that pass are shown to the model and cited;
  when none does, the answer is a refusal naming what was not found, with the closest photos as
  *closest matches* (never citations);
- "Show me photos of ..." returns the retrieved photos scoring >= min_score that pass the same check;
- a follow-up ("When was it taken?") is asked about the first photo of the previous turn (``history``):
  the one it cited first, or the best photo it found; after a refusal there is none, and it is refused;
- anything else (general knowledge, chit-chat, a question that names no photo) is refused: there is
  no photo to answer from. A question that uses words the model never saw in training
  (cafe_core.vocab) is refused saying so.
A question about one given photo (``image=``) skips all of this and asks the model about that photo;
when that photo is in the index, a question about its date is asked with the date from the index (the
pixels do not show it).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from app.config import AnswerConfig
from app.evidence import EvidenceChecker, PhotoEvidence, missing_parts
from app.photos import SkipPhoto, load_photo, prepare_image
from app.query import FOLLOWUP_WORDS, followup_question, parse_message, the_parts
from app.search import Filters, Hit, QueryError, indexed_hit, search, search_all_of
from cafe_core import prompts
from data.vocab import DESCRIBE_QUESTION

log = logging.getLogger(__name__)

# What the user sees when no photo can be answered from.
NO_MATCH_ANSWER = "I found no matching photo for that question, so I cannot answer it from your photos."
NOT_FOUND = "I found no photo with {things}."
UNKNOWN_WORDS = "I found no photo with {things}: this model has never seen {words} (it knows only what it was trained on)."
UNKNOWN_FOLLOWUP = "I cannot answer that from the photo: this model has never seen {words} (it knows only what it was trained on)."
OFF_TOPIC = ("I can only answer questions about your photos. Name the photo by what it shows (for example "
             "\"What color is the background in the photo with the red circle?\"), or pick one in Photos.")
SEARCH_FOUND = "Found {n} photo{s} with {things}."

_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class Source:
    """A photo the answer was grounded on. n: its number [n] in the prompt (None for a given photo)."""

    path: str
    score: float | None
    date: str = ""
    n: int | None = None
    cited: bool = False

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "score": None if self.score is None else round(float(self.score), 6),
            "date": self.date,
            "n": self.n,
            "cited": self.cited,
        }


@dataclass
class Answer:
    """An answer (possibly still streaming) and its photos.

    text: the answer so far; sources: the photos it was grounded on, cited ones first once ``done``;
    kind: "answer", "search" (photos for "show me ...": in ``sources``) or "refusal" (``sources`` empty);
    refused / missing / closest: a refusal, the things not found, and the closest photos (not evidence);
    parts: the things the question named (kept for follow-ups); citations: [n] -> path.
    """

    question: str
    text: str = ""
    sources: list[Source] = field(default_factory=list)
    done: bool = False
    kind: str = "answer"
    missing: list[str] = field(default_factory=list)
    closest: list[Source] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.kind == "refusal"

    @property
    def found(self) -> bool:
        """Was there a photo to answer from (or to show)?"""
        return not self.refused

    @property
    def citations(self) -> dict[int, str]:
        """Every [n] in the text that names a context photo, mapped to that photo's path."""
        by_n = {s.n: s.path for s in self.sources if s.n is not None}
        return {n: by_n[n] for n in cited_numbers(self.text) if n in by_n}

    @property
    def cited_paths(self) -> list[str]:
        """Paths of the cited photos, first citation first."""
        return list(self.citations.values())

    @property
    def summary(self) -> str:
        """The answer with its evidence in words a person can check: "white — in [1] IMG_0186.jpg, 26 May 2017"."""
        if self.kind != "answer":
            return self.text
        short = " ".join(_CITATION.sub("", self.text).split()).strip(" ,;") or "(no answer)"
        cited = [s for s in self.sources if s.cited and s.n is not None]
        if not cited:
            given = [s for s in self.sources if s.n is None]
            if given and given[0].path:
                return f"{short} — in {Path(given[0].path).name}"
            return f"{short} — cites none of the photos shown" if self.sources else short
        where = "; ".join(f"[{s.n}] {Path(s.path).name}, {_long_date(s.date)}" for s in cited)
        return f"{short} — in {where}"

    def to_json(self) -> dict:
        """The CLI's JSON contract: {"answer", "summary", "kind", "refused", "missing", "sources", "closest"}."""
        return {"answer": self.text, "summary": self.summary, "kind": self.kind, "refused": self.refused,
                "missing": list(self.missing), "sources": [s.to_json() for s in self.sources],
                "closest": [s.to_json() for s in self.closest]}


def _long_date(day: str) -> str:
    """"2017-05-26" -> "26 May 2017"."""
    try:
        return dt.date.fromisoformat(day[:10]).strftime("%d %b %Y").lstrip("0")
    except ValueError:
        return day


@dataclass
class Turn:
    """One exchange of a conversation, as the next question needs it: what was asked and named, and
    which photos the answer rested on."""

    question: str
    answer: str
    photos: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    kind: str = "answer"

    @classmethod
    def of(cls, answer: Answer) -> "Turn":
        """The turn of an answer: its photos are the cited ones (first citation first), else the photos it
        was given or found (a search's results); a refusal has none (its closest matches are not answers)."""
        photos = answer.cited_paths or [s.path for s in answer.sources if s.path]
        return cls(answer.question, answer.text, photos, list(answer.parts), answer.kind)

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.answer, "photos": self.photos, "parts": self.parts,
                "kind": self.kind}

    @classmethod
    def from_json(cls, d: dict) -> "Turn":
        return cls(str(d["question"]), str(d.get("answer", "")), [str(p) for p in d.get("photos", [])],
                   [str(p) for p in d.get("parts", [])], str(d.get("kind", "answer")))


def cited_numbers(text: str) -> list[int]:
    """The distinct [n] citations in text, in order of first appearance."""
    seen: list[int] = []
    for m in _CITATION.finditer(text):
        n = int(m.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def select_context(
    hits: Sequence[Hit], config: AnswerConfig, relevance: Sequence[float | None] | None = None
) -> list[Hit]:
    """The photos to show the model: score >= min_score, within context_margin of the best, at most max_context.

    `relevance` (one per hit; default: the cosine scores) orders the passing hits, most relevant first
    (ties keep the order of `hits`), and measures the margin; a hit whose relevance is None is never shown.
    """
    rel = [h.score for h in hits] if relevance is None else list(relevance)
    if len(rel) != len(hits):
        raise ValueError(f"select_context got {len(hits)} hits but {len(rel)} relevance scores")
    passing = [(r, i) for i, (h, r) in enumerate(zip(hits, rel)) if h.score >= config.min_score and r is not None]
    if not passing:
        return []
    passing.sort(key=lambda ri: (-ri[0], ri[1]))
    best = passing[0][0]
    return [hits[i] for r, i in passing if r >= best - config.context_margin][: config.max_context]


def order_sources(sources: Sequence[Source], text: str) -> list[Source]:
    """Mark the sources cited in text; cited ones first (by first citation), then the rest in their order."""
    order = cited_numbers(text)
    for s in sources:
        s.cited = s.n in order
    cited = sorted((s for s in sources if s.cited), key=lambda s: order.index(s.n))
    rest = [s for s in sources if not s.cited]
    return cited + rest


class Answerer:
    """Answers questions with one CafeModel: retrieval through `index` (a PhotoIndex on the same model).

    `index` may be None when only questions about given photos are asked (no retrieval). `vocab`
    (cafe_core.vocab.TrainingVocab or None): the words the model was trained on.
    """

    def __init__(self, model, index=None, config: AnswerConfig | None = None, vocab=None):
        if index is not None and index.model is not model:
            # One model serves both embedding and generation: never hold two in memory.
            raise ValueError("the index must use the answering model itself (index.model is model)")
        self.model = model
        self.index = index
        self.config = config or AnswerConfig()
        self.vocab = vocab
        self.evidence = EvidenceChecker(model, self.config.min_yes, self.config.min_size_margin,
                                        self.config.min_attribute)
        self._decoded: dict[str, Image.Image] = {}  # photos read for the current answer (re-ranking, check, reading)

    # ------------------------------------------------------------------------------------ public

    def answer(self, question: str, k: int | None = None, filters: Filters | None = None, image=None,
               history: Sequence[Turn] = ()) -> Answer:
        """The complete answer (see stream())."""
        result = Answer(question)
        for result in self.stream(question, k=k, filters=filters, image=image, history=history):
            pass
        return result

    def stream(self, question: str, k: int | None = None, filters: Filters | None = None, image=None,
               history: Sequence[Turn] = ()) -> Iterator[Answer]:
        """Yield the answer as it is generated: each Answer has the text so far; the last has done=True.

        image: a photo (path or PIL image) to ask about directly. Otherwise the message is read (see the
        module doc); ``history``: the conversation's earlier turns, oldest first.
        """
        if not isinstance(question, str) or not question.strip():
            raise QueryError("the question is empty")
        question = question.strip()
        self._decoded.clear()
        if image is not None:
            yield from self._stream_about(question, image, followup_question(question, ()))
            return
        previous = history[-1] if history and history[-1].photos else None
        parsed = parse_message(question, has_previous=previous is not None)
        if parsed.kind == "other":
            yield self._refusal(question, OFF_TOPIC)
        elif parsed.kind == "followup":
            unknown = [w for w in self._unknown([question]) if w not in FOLLOWUP_WORDS]
            if unknown:
                yield self._refusal(question, UNKNOWN_FOLLOWUP.format(words=", ".join(f"'{w}'" for w in unknown)))
            else:
                yield from self._stream_followup(question, previous)
        elif (unknown := self._unknown(parsed.parts)):
            words = ", ".join(f"'{w}'" for w in unknown)
            yield self._refusal(question, UNKNOWN_WORDS.format(things=the_parts(parsed.parts), words=words),
                                list(parsed.parts))
        elif parsed.kind == "search":
            yield self._search(question, list(parsed.parts), k, filters)
        else:
            yield from self._stream_grounded(question, list(parsed.parts), k, filters)

    def retrieve(self, question: str, k: int | None = None, filters: Filters | None = None,
                 parts: Sequence[str] | None = None) -> list[Hit]:
        """The photos the question retrieves (best first), before re-ranking and the evidence check.

        With `decompose` on, a question that names its photo by what it shows ("... in the photo with
        the red car and the dog?", see app.query) retrieves photos that show each of those things
        (app.search.search_all_of); any other question is retrieved by its own embedding.
        """
        if self.index is None:
            raise QueryError("no photo index is open: index photos first, or ask about one photo")
        k = k or self.config.k
        if parts is None:
            parts = parse_message(question).parts
        if parts and self.config.decompose:
            return search_all_of(self.index, list(parts), k=k, filters=filters)
        return search(self.index, text=question, k=k, filters=filters)

    def stream_with_context(self, question: str, context: Sequence[Hit], parts: Sequence[str] = ()) -> Iterator[Answer]:
        """Answer from the context photos given (numbered [1], [2], ... in this order): no retrieval, no check.

        Benchmarks use it to score the reading link alone (the right photo shown, is the answer right?).
        """
        result = Answer(question, parts=list(parts))
        if not context:
            result.text, result.done, result.kind = NO_MATCH_ANSWER, True, "refusal"
            yield result
            return
        result.sources = [Source(h.path, h.score, h.date[:10], n) for n, h in enumerate(context, 1)]
        images = [self._load(h.path) for h in context]
        content = prompts.grounded_user_content(question, [s.date for s in result.sources])
        yield from self._generate(content, images, result)
        result.text = result.text.strip()
        result.sources = order_sources(result.sources, result.text)
        result.done = True
        yield result

    def relevance(self, question: str, hits: Sequence[Hit], parts: Sequence[str] | None = None) -> list[float | None]:
        """How relevant each hit is to the question: its cosine, or with re-ranking on (see AnswerConfig),
        for the first rerank_top hits scoring >= min_score, cosine + rerank_weight x log P(the things the
        question names, as a description of the photo), relative to the likeliest of them; the other hits
        get None, and so does a photo that can no longer be read (moved or damaged since indexing: logged)."""
        cfg = self.config
        head = [i for i, h in enumerate(hits) if h.score >= cfg.min_score][: cfg.rerank_top]
        if len(head) < 2 or cfg.rerank_weight == 0:
            return [h.score for h in hits]
        if parts is None:
            parts = parse_message(question).parts if cfg.decompose else ()
        logp = self.description_logprob(question, [hits[i] for i in head], parts)
        known = [lp for lp in logp if lp is not None]
        out: list[float | None] = [None] * len(hits)
        for i, lp in zip(head, logp):
            if lp is not None:
                out[i] = hits[i].score + cfg.rerank_weight * (lp - max(known))
        return out

    def description_logprob(self, question: str, hits: Sequence[Hit], parts: Sequence[str] = ()) -> list[float | None]:
        """log P("a photo of <the parts>" (or the question itself) | each photo) under the describe
        question; None for a photo that cannot be read."""
        images = self._readable(dict(enumerate(hits)))
        if not images:
            return [None] * len(hits)
        description = prompts.describe_parts(parts) if parts else question
        by_index = dict(zip(images, self.model.reply_logprob(DESCRIBE_QUESTION, description, list(images.values()))))
        return [by_index.get(i) for i in range(len(hits))]

    def check(self, parts: Sequence[str], hits: Sequence[Hit], complete: bool = False) -> list[PhotoEvidence | None]:
        """The evidence check of each hit (None for a photo that cannot be read); ``complete``: every
        question asked, also those that cannot change the verdict (EvidenceChecker)."""
        images = self._readable(dict(enumerate(hits)))
        found = self.evidence.check(parts, list(images.values()), complete) if images else []
        by_index = dict(zip(images, found))
        return [by_index.get(i) for i in range(len(hits))]

    # ----------------------------------------------------------------------------------- private

    def _unknown(self, parts: Sequence[str]) -> list[str]:
        if self.vocab is None:
            return []
        words: list[str] = []
        for part in parts:
            words += [w for w in self.vocab.unknown(part) if w not in words]
        return words

    def _refusal(self, question: str, text: str, missing: Sequence[str] = (), closest: Sequence[Hit] = (),
                 parts: Sequence[str] = ()) -> Answer:
        return Answer(question, text=text, done=True, kind="refusal", missing=list(missing),
                      closest=[Source(h.path, h.score, h.date[:10]) for h in closest], parts=list(parts))

    def _ranked(self, question: str, parts: list[str], k, filters) -> tuple[list[tuple[Hit, float]], list[Hit]]:
        """(photo, relevance) of the retrieved photos scoring >= min_score, re-ranked by the generator; and
        every retrieved photo (a refusal's closest matches, even when none clears min_score)."""
        hits = self.retrieve(question, k, filters, parts)
        above = [h for h in hits if h.score >= self.config.min_score]
        relevance = self.relevance(question, above, parts if self.config.decompose else ())
        ranked = [(h, r) for h, r in zip(above, relevance) if r is not None]
        return sorted(ranked, key=lambda hr: -hr[1]), hits  # stable: ties keep retrieval order

    def _stream_grounded(self, question: str, parts: list[str], k, filters) -> Iterator[Answer]:
        cfg = self.config
        ranked, hits = self._ranked(question, parts, k, filters)
        if not ranked:
            yield self._refusal(question, NOT_FOUND.format(things=the_parts(parts)), parts,
                                hits[: cfg.max_closest], parts)
            return
        candidates = ranked[: max(1, cfg.evidence_top)] if cfg.check_evidence else ranked
        if cfg.check_evidence:
            # The best photo alone first (it passes most of the time); the other candidates only if it fails.
            evidence = self.check(parts, [h for h, _ in candidates[:1]])
            if not evidence[0] or not evidence[0].shows_all:
                evidence += self.check(parts, [h for h, _ in candidates[1:]])
            shown = [hr for hr, e in zip(candidates, evidence) if e is not None and e.shows_all]
            if not shown:
                missing = missing_parts(parts, [e for e in evidence if e is not None])
                yield self._refusal(question, NOT_FOUND.format(things=the_parts(missing)), missing,
                                    [h for h, _ in ranked[: cfg.max_closest]], parts)
                return
        else:
            shown = candidates
        context = select_context([h for h, _ in shown], cfg, [r for _, r in shown])
        yield from self.stream_with_context(question, context, parts)

    def _search(self, question: str, parts: list[str], k, filters) -> Answer:
        """"Show me photos of ...": the photos that show every named thing, checked by the generator."""
        cfg = self.config
        retrieved = self.retrieve(question, k or cfg.k, filters, parts)
        hits = [h for h in retrieved if h.score >= cfg.min_score]
        evidence = self.check(parts, hits) if cfg.check_evidence else [None] * len(hits)
        shown = [h for h, e in zip(hits, evidence) if not cfg.check_evidence or (e is not None and e.shows_all)]
        if not shown:
            missing = missing_parts(parts, [e for e in evidence if e is not None]) if cfg.check_evidence else parts
            return self._refusal(question, NOT_FOUND.format(things=the_parts(missing)), missing,
                                 retrieved[: cfg.max_closest], parts)
        n = len(shown)
        return Answer(question, text=SEARCH_FOUND.format(n=n, s="" if n == 1 else "s", things=the_parts(parts)),
                      sources=[Source(h.path, h.score, h.date[:10]) for h in shown], done=True, kind="search",
                      parts=parts)

    def _stream_followup(self, question: str, previous: Turn) -> Iterator[Answer]:
        """A follow-up about the previous turn's first photo, rewritten to name it when it fits a trained form."""
        rewritten = followup_question(question, previous.parts)
        yield from self._stream_about(question, previous.photos[0], rewritten, previous.parts)

    def _generate(self, content: str, images: list[Image.Image], result: Answer) -> Iterator[Answer]:
        for piece in self.model.stream(content, images, max_new_tokens=self.config.max_new_tokens):
            result.text += piece
            yield result

    def _stream_about(self, question: str, image, rewritten: str | None = None,
                      parts: Sequence[str] = ()) -> Iterator[Answer]:
        """Ask about one photo. A photo of the index with a ``rewritten`` question (a trained form: see
        app.query.followup_question) is asked in the grounded format, with its date; otherwise the question
        is asked about the pixels as it is."""
        if rewritten and not isinstance(image, Image.Image) and self.index is not None:
            try:
                hit = indexed_hit(self.index, os.path.abspath(os.fspath(image)))
            except QueryError:  # not in the index (any more): asked about the file itself
                hit = None
            if hit is not None:
                for result in self.stream_with_context(rewritten, [hit], parts):
                    result.question = question
                    yield result
                return
        if isinstance(image, Image.Image):
            img, path = prepare_image(image.copy(), self.config.max_side), getattr(image, "filename", "") or ""
        else:
            path = os.path.abspath(os.fspath(image))
            img = self._load(path)
        result = Answer(question, sources=[Source(path, None, cited=True)], parts=list(parts))
        yield from self._generate(question, [img], result)
        result.text = result.text.strip()
        result.done = True
        yield result

    def _readable(self, hits: dict) -> dict:
        """{key: decoded photo} of the hits that can still be read (others logged and left out)."""
        images = {}
        for key, hit in hits.items():
            try:
                images[key] = self._load(hit.path)
            except QueryError as e:
                log.warning("leaving out %s: %s", hit.path, e)
        return images

    def _load(self, path: str) -> Image.Image:
        if path in self._decoded:
            return self._decoded[path]
        if len(self._decoded) > 32:  # a long benchmark loop of stream_with_context calls
            self._decoded.clear()
        try:
            img, _ = load_photo(path, max_pixels=self.config.max_pixels, max_side=self.config.max_side)
        except (SkipPhoto, OSError) as e:
            raise QueryError(f"cannot read the photo {path}: {e}") from None
        self._decoded[path] = img
        return img
