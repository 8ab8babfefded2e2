"""Grounded answers about retrieved photos (multimodal RAG with one CAFe model).

The same CafeModel instance embeds the question (retrieval through app.search) and reads the best
photos to answer it, citing them as [1], [2], ... in the order they were shown:

    from app.index import PhotoIndex
    from app.answer import Answerer
    index = PhotoIndex.open(db=..., model=...)
    answerer = Answerer(index.model, index)
    result = answerer.answer("What color is the background in the photo with the red circle?")
    result.text        # "gray [1]"
    result.sources     # [Source(path=..., score=0.71, n=1, cited=True), ...]

    for partial in answerer.stream(question):   # the UI: the text grows, sources come with the last one
        print(partial.text)

The best retrieved photos are re-ranked by the same model before the context is chosen: how likely
is the question as a description of each photo (AnswerConfig.rerank_top / rerank_weight).
A question about one given photo (`image=`) skips retrieval and asks the model about that photo alone.
When no photo scores at least `AnswerConfig.min_score`, the answer says so and the model is not asked.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from PIL import Image

from app.photos import SkipPhoto, load_photo, prepare_image
from app.query import referring_parts
from app.search import Filters, Hit, QueryError, search, search_all_of
from cafe_core import prompts

log = logging.getLogger(__name__)

# What the user sees when retrieval finds nothing good enough to answer from.
NO_MATCH_ANSWER = "I found no matching photo for that question, so I cannot answer it from your photos."

_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class AnswerConfig:
    """How grounded answers pick their evidence and generate.

    k: photos retrieved for a question (the candidates the context is chosen from).
    min_score: score a photo needs to count as matching the question (the mean cosine over the things it
        names with decomposition, else the question's cosine); below it for every photo, the answer is
        NO_MATCH_ANSWER. Calibrated on the shipped model with benchmarks/grounded.py on a 300-photo album
        (seed 300): just below the lowest best score of any album question (0.394). On this model
        the score does not tell off-topic questions apart (on the seed-200 album they score up to 0.86,
        album questions' best scores have median 0.56), so they are answered from the closest photo (an
        earlier demo model separated them, 0.643 vs >= 0.728). Scores are model-specific: recalibrate.
    max_context: at most this many photos are shown to the model.
    context_margin: only photos within this cosine distance of the best score are shown. A tiny model
        answers best when the evidence is unambiguous: near-ties are shown, clear runners-up are not.
        Measured on an earlier demo model (benchmarks/grounded.py, 300 photos, seed 300): margin 0 (the top
        photo and exact ties) -> answers cite a photo 100% of the time, 32% right; 0.01 (3 photos
        for 90% of questions) -> 26%, 27%; 0.05 -> 27%, 27%. It was trained with one photo per grounded
        prompt, so it reads best from one; a model trained with several photos per prompt can use a
        wider margin (e.g. 0.05).
    rerank_top: the best this many retrieved photos (those scoring >= min_score) are re-ranked by the
        same model before the context is chosen from them; 0 or 1 turns re-ranking off (context from
        retrieval order). Re-ranking asks the generator how likely "a photo of <the things the question
        names>" (or the question itself, when it names none) is as a description of each photo
        (CafeModel.reply_logprob with the describe instruction): the embedding ranks by one pooled
        vector, the generator reads every image token against every word.
    rerank_weight: score added per nat of that log-likelihood (relevance = score + weight x log P).
        Calibrated on the shipped model (300 photos, seed 300, top-1 photo of 168 album questions, with
        decomposition): retrieval alone 0.500; re-ranking the top 5 with weight 0.013 0.554 (0.01: 0.548,
        0.02: 0.536, 0.05: 0.554).
    decompose: retrieve a question that names its photo by what it shows ("... in the photo with the
        red car and the dog?") by each of those things (app.query.referring_parts,
        app.search.search_all_of) instead of by one embedding of the whole question.
        Shipped model, seed-300 album: top-1 0.339 by the whole question, 0.500 by its parts (top 5 0.863).
    max_new_tokens: length limit of the generated answer.
    max_side: longest side of each photo handed to the model (its processor resizes further).
    """

    k: int = 10
    min_score: float = 0.39
    max_context: int = 3
    context_margin: float = 0.0
    rerank_top: int = 5
    rerank_weight: float = 0.013
    decompose: bool = True
    max_new_tokens: int = 48
    max_side: int = 512
    max_pixels: int = 150_000_000


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

    text: the answer so far; sources: the context photos, cited ones first once `done`;
    found: False when no photo matched (text is NO_MATCH_ANSWER); citations: [n] -> path.
    """

    question: str
    text: str = ""
    sources: list[Source] = field(default_factory=list)
    found: bool = True
    done: bool = False

    @property
    def citations(self) -> dict[int, str]:
        """Every [n] in the text that names a context photo, mapped to that photo's path."""
        by_n = {s.n: s.path for s in self.sources if s.n is not None}
        return {n: by_n[n] for n in cited_numbers(self.text) if n in by_n}

    @property
    def cited_paths(self) -> list[str]:
        """Paths of the cited photos, first citation first."""
        return list(self.citations.values())

    def to_json(self) -> dict:
        """The CLI's JSON contract: {"answer": ..., "sources": [{"path", "score", ...}]}."""
        return {"answer": self.text, "sources": [s.to_json() for s in self.sources]}


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

    `hits` must be ordered best first (as app.search returns them by relevance). `relevance` (one per
    hit; default: the cosine scores) orders the passing hits and measures the margin; a hit whose
    relevance is None is never shown.
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
    """Mark the sources cited in text; cited ones first (by first citation), then the rest by score."""
    order = cited_numbers(text)
    for s in sources:
        s.cited = s.n in order
    cited = sorted((s for s in sources if s.cited), key=lambda s: order.index(s.n))
    rest = [s for s in sources if not s.cited]
    return cited + rest


class Answerer:
    """Answers questions with one CafeModel: retrieval through `index` (a PhotoIndex on the same model).

    `index` may be None when only questions about given photos are asked (no retrieval).
    """

    def __init__(self, model, index=None, config: AnswerConfig | None = None):
        if index is not None and index.model is not model:
            # One model serves both embedding and generation: never hold two in memory.
            raise ValueError("the index must use the answering model itself (index.model is model)")
        self.model = model
        self.index = index
        self.config = config or AnswerConfig()

    # ------------------------------------------------------------------------------------ public

    def answer(self, question: str, k: int | None = None, filters: Filters | None = None, image=None) -> Answer:
        """The complete answer (see stream())."""
        result = Answer(question)
        for result in self.stream(question, k=k, filters=filters, image=image):
            pass
        return result

    def stream(
        self, question: str, k: int | None = None, filters: Filters | None = None, image=None
    ) -> Iterator[Answer]:
        """Yield the answer as it is generated: each Answer has the text so far; the last has done=True.

        image: a photo (path or PIL image) to ask about directly; retrieval is skipped and `sources`
        is that photo. Otherwise the question retrieves up to k photos (filters apply) and the
        context photos (see select_context) are shown to the model with their dates.
        """
        if not isinstance(question, str) or not question.strip():
            raise QueryError("the question is empty")
        question = question.strip()
        if image is not None:
            yield from self._stream_about(question, image)
        else:
            yield from self._stream_grounded(question, k, filters)

    def retrieve(self, question: str, k: int | None = None, filters: Filters | None = None) -> list[Hit]:
        """The photos the question retrieves (best first), before the context is chosen.

        With `decompose` on, a question that names its photo by what it shows ("... in the photo with
        the red car and the dog?", see app.query) retrieves photos that show each of those things
        (app.search.search_all_of); any other question is retrieved by its own embedding.
        """
        if self.index is None:
            raise QueryError("no photo index is open: index photos first, or ask about one photo")
        k = k or self.config.k
        parts = referring_parts(question) if self.config.decompose else []
        if parts:
            return search_all_of(self.index, parts, k=k, filters=filters)
        return search(self.index, text=question, k=k, filters=filters)

    # ----------------------------------------------------------------------------------- private

    def _generate(self, content: str, images: list[Image.Image], result: Answer) -> Iterator[Answer]:
        for piece in self.model.stream(content, images, max_new_tokens=self.config.max_new_tokens):
            result.text += piece
            yield result

    def stream_with_context(self, question: str, context: Sequence[Hit]) -> Iterator[Answer]:
        """stream() with the context photos given (numbered [1], [2], ... in this order): no retrieval.

        Benchmarks use it to score the reading link alone (the right photo shown, is the answer right?).
        """
        result = Answer(question)
        if not context:
            result.text, result.found, result.done = NO_MATCH_ANSWER, False, True
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

    def relevance(self, question: str, hits: Sequence[Hit]) -> list[float | None]:
        """How relevant each hit is to the question: its cosine, or with re-ranking on (see AnswerConfig),
        for the first rerank_top hits scoring >= min_score, cosine + rerank_weight x log P(question as a
        description of the photo), relative to the likeliest of them; the other hits get None, and so does
        a photo that can no longer be read (moved or damaged since indexing: logged and skipped)."""
        cfg = self.config
        head = [i for i, h in enumerate(hits) if h.score >= cfg.min_score][: cfg.rerank_top]
        if len(head) < 2 or cfg.rerank_weight == 0:
            return [h.score for h in hits]
        images = {}
        for i in head:
            try:
                images[i] = self._load(hits[i].path)
            except QueryError as e:
                log.warning("not re-ranking %s: %s", hits[i].path, e)
        head = list(images)
        if not head:
            return [None] * len(hits)
        parts = referring_parts(question) if cfg.decompose else []
        description = prompts.describe_parts(parts) if parts else question
        logp = self.model.reply_logprob(prompts.DESCRIBE_INSTRUCTION, description, list(images.values()))
        out: list[float | None] = [None] * len(hits)
        for i, lp in zip(head, logp):
            out[i] = hits[i].score + cfg.rerank_weight * (lp - max(logp))
        return out

    def _stream_grounded(self, question: str, k: int | None, filters: Filters | None) -> Iterator[Answer]:
        hits = self.retrieve(question, k, filters)
        yield from self.stream_with_context(question, select_context(hits, self.config, self.relevance(question, hits)))

    def _stream_about(self, question: str, image) -> Iterator[Answer]:
        if isinstance(image, Image.Image):
            img, path = prepare_image(image.copy(), self.config.max_side), getattr(image, "filename", "") or ""
        else:
            path = os.path.abspath(os.fspath(image))
            img = self._load(path)
        result = Answer(question, sources=[Source(path, None, cited=True)])
        yield from self._generate(question, [img], result)
        result.text = result.text.strip()
        result.done = True
        yield result

    def _load(self, path: str) -> Image.Image:
        try:
            img, _ = load_photo(path, max_pixels=self.config.max_pixels, max_side=self.config.max_side)
        except (SkipPhoto, OSError) as e:
            raise QueryError(f"cannot read the photo {path}: {e}") from None
        return img


def answer(index, question: str, k: int | None = None, filters: Filters | None = None,
           config: AnswerConfig | None = None) -> Answer:
    """One grounded answer from a PhotoIndex, with its own model (see Answerer)."""
    return Answerer(index.model, index, config).answer(question, k=k, filters=filters)
