"""Pure scoring functions of the evaluator: no model, no files, numpy in and numbers out.

- retrieval: `recall_at_k` over a score matrix and a relevance matrix;
- sample-world language: `parse_world_text` reads which objects / positions / background / count a
  caption or a generated description names (with the world vocabulary), `world_relevance` turns
  parsed queries + ground-truth specs into a relevance matrix, `describe_scores` grades descriptions;
- VQA: `normalize_answer`, `vqa_scores`;
- POPE: `parse_yes_no`, `pope_metrics`;
- modality gap: `modality_stats`;
- `stratified_sample`: deterministic, type-balanced subsets (for --max-questions).
"""

from __future__ import annotations

import random
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from data.vocab import BACKGROUNDS, COLORS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES
from data.queries import image_tags, matches, pair_query
from data.world import PhotoSpec, position_phrase

KS: tuple[int, ...] = (1, 5, 10)
OBJECT_QUERY = "a {color} {shape}"  # the single-object retrieval query ("a purple star")
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")

# The headline numbers: the eval chart, the ablation chart and the CLI's required JSON keys.
HEADLINE_METRICS: tuple[str, ...] = (
    "t2i_object_recall@1",
    "t2i_pair_recall@1",
    "t2i_recall@1",
    "t2i_recall@5",
    "i2t_recall@1",
    "i2t_recall@5",
    "vqa_accuracy",
    "vqa_position_accuracy",
    "describe_accuracy",
    "pope_random_accuracy",
    "pope_popular_accuracy",
    "pope_adversarial_accuracy",
    "pope_adversarial_f1",
    "modality_gap",
)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Metric keys: built here only, so nothing parses them back
# ---------------------------------------------------------------------------------------------
# Retrieval directions: (key prefix, what is ranked, the count key of its queries).
RETRIEVAL_KINDS: tuple[tuple[str, str, str], ...] = (
    ("t2i", "text -> image", "n_retrieval_texts"),
    ("i2t", "image -> text", "n_retrieval_images"),
    ("t2i_object", "object -> image", "n_object_queries"),
    ("t2i_pair", "pair -> image", "n_pair_queries"),
)
POPE_STATS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def recall_key(kind: str, k: int) -> str:
    """"t2i_recall@1" for kind "t2i" (see RETRIEVAL_KINDS)."""
    return f"{kind}_recall@{k}"


def vqa_key(qtype: str) -> str:
    """Accuracy of one question type: "vqa_position_accuracy"."""
    return f"vqa_{qtype}_accuracy"


def vqa_count_key(qtype: str) -> str:
    return f"n_vqa_{qtype}"


def pope_key(split: str, stat: str) -> str:
    """"pope_adversarial_f1" for split "adversarial", stat "f1"."""
    return f"pope_{split}_{stat}"


def pope_count_key(split: str) -> str:
    return f"n_pope_{split}"


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------
def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    """Fraction of queries with at least one relevant candidate among their top k, for each k.

    scores: (Q, C) similarities, higher is better; relevant: (Q, C) bool. Ties are broken by
    candidate index (stable sort), so results are deterministic. Queries without any relevant
    candidate are left out (they cannot hit); with no answerable query a ValueError is raised.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be the same (Q, C) shape")
    answerable = relevant.any(axis=1)
    if not answerable.any():
        raise ValueError("no query has a relevant candidate")
    order = np.argsort(-scores[answerable], axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant[answerable], order, axis=1)
    first_hit = rel_sorted.argmax(axis=1)  # rank (0-based) of the best-ranked relevant candidate
    return {k: float((first_hit < k).mean()) for k in ks}


# ---------------------------------------------------------------------------------------------
# Sample-world language
# ---------------------------------------------------------------------------------------------
def _alt(words: Iterable[str]) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


_OBJECT_RE = re.compile(rf"\b(?:({_alt(SIZES)})\s+)?({_alt(COLORS)})\s+({_alt(SHAPES)})s?\b")
_POSITION_RE = re.compile("|".join(rf"(?P<{p}>\b{re.escape(position_phrase(p))}\b)" for p in POSITIONS))
_BACKGROUND_RE = re.compile(rf"\b({_alt(BACKGROUNDS)})\s+background\b")
_COUNT_RE = re.compile(rf"\b({_alt(NUMBER_WORDS)})\s+objects?\b")
# Descriptions list objects as "X on the left, Y in the middle and Z" or "on the left, X; in the middle, Y".
_FRAGMENT_SPLIT = re.compile(r"[;,:.]|\band\b|\bwith\b")


@dataclass(frozen=True)
class NamedObject:
    """An object as a text names it; None = the attribute is not named."""

    color: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class WorldText:
    """What a caption, query or generated description says about a photo."""

    objects: tuple[NamedObject, ...]
    background: str | None = None
    count: int | None = None

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The (color, shape) pairs named."""
        return {(o.color, o.shape) for o in self.objects}


def parse_world_text(text: str) -> WorldText:
    """Read the objects (with size and position when named), background and object count a text names.

    Works on every caption paraphrase of data.world and on free model output; words outside the
    world vocabulary are ignored. A position phrase belongs to the object in the same fragment
    ("a red circle on the left"), else to the next object ("on the left, a red circle").
    """
    text = text.lower()
    bg = _BACKGROUND_RE.search(text)
    count = _COUNT_RE.search(text)
    # The background phrase must not be read as an object ("a black background" has no shape anyway).
    objects: list[NamedObject] = []
    pending_position: str | None = None
    for fragment in _FRAGMENT_SPLIT.split(text):
        pos_match = _POSITION_RE.search(fragment)
        position = pos_match.lastgroup if pos_match else None
        found = list(_OBJECT_RE.finditer(fragment))
        if not found:
            pending_position = position or pending_position
            continue
        for m in found:
            size, color, shape = m.groups()
            objects.append(NamedObject(color, shape, size, position or pending_position))
        pending_position = None
    return WorldText(
        objects=tuple(objects),
        background=bg.group(1) if bg else None,
        count=NUMBER_WORDS.index(count.group(1)) if count else None,
    )


def spec_matches(query: WorldText, spec: PhotoSpec) -> bool:
    """True when the photo has every attribute the text names: each named object (with its named
    size/position), the named background and the named object count."""
    if query.background is not None and query.background != spec.background:
        return False
    if query.count is not None and query.count != len(spec.objects):
        return False
    for q in query.objects:
        if not any(
            o.color == q.color
            and o.shape == q.shape
            and (q.size is None or o.size == q.size)
            and (q.position is None or o.position == q.position)
            for o in spec.objects
        ):
            return False
    return True


def world_relevance(queries: Sequence[WorldText], specs: Sequence[PhotoSpec]) -> np.ndarray:
    """(Q, P) bool: photo p is relevant to query q when it has every attribute q names."""
    return np.array([[spec_matches(q, s) for s in specs] for q in queries], dtype=bool).reshape(len(queries), len(specs))


def pair_queries(specs: Sequence[PhotoSpec]) -> tuple[list[str], np.ndarray]:
    """The two-object retrieval queries of ``t2i_pair_recall@k``: one per photo with two or more objects
    ("a red circle and a blue star": its two leftmost, no sizes), and the (Q, P) relevance of every
    photo that shows both kinds."""
    queries = [pair_query(s) for s in specs if len(s.objects) >= 2]
    tags = [image_tags(s) for s in specs]
    relevant = np.array([[matches(q.tags, t) for t in tags] for q in queries], dtype=bool).reshape(len(queries), len(specs))
    return [q.text for q in queries], relevant


def describe_scores(descriptions: Sequence[str], specs: Sequence[PhotoSpec]) -> dict[str, float]:
    """Grades generated descriptions against their photos' ground truth.

    - describe_accuracy: the description names exactly the photo's (color, shape) objects, every
      size/position it names is right, and it names the right background;
    - describe_object_f1: mean F1 of named vs true (color, shape) pairs;
    - describe_background_accuracy: the named background is right.
    """
    if len(descriptions) != len(specs):
        raise ValueError(f"{len(descriptions)} descriptions for {len(specs)} photos")
    if not specs:
        return {}
    exact = f1s = bg_ok = 0.0
    for text, spec in zip(descriptions, specs):
        named = parse_world_text(text)
        true_pairs = {o.pair for o in spec.objects}
        tp = len(named.pairs & true_pairs)
        p = tp / len(named.pairs) if named.pairs else 0.0
        r = tp / len(true_pairs)
        f1s += 2 * p * r / (p + r) if p + r else 0.0
        bg_ok += named.background == spec.background
        by_pair = {o.pair: o for o in spec.objects}
        attributes_right = all(
            (o.color, o.shape) in by_pair
            and o.size in (None, by_pair[(o.color, o.shape)].size)
            and o.position in (None, by_pair[(o.color, o.shape)].position)
            for o in named.objects
        )
        exact += named.pairs == true_pairs and attributes_right and named.background == spec.background
    n = len(specs)
    return {"describe_accuracy": exact / n, "describe_object_f1": f1s / n, "describe_background_accuracy": bg_ok / n}


# ---------------------------------------------------------------------------------------------
# VQA and POPE
# ---------------------------------------------------------------------------------------------
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: "  A small, red Circle." -> "a small red circle"."""
    return " ".join(text.lower().translate(_PUNCT).split())


def vqa_scores(answers: Sequence[str], truths: Sequence[str], qtypes: Sequence[str]) -> dict[str, float]:
    """Normalised exact-match accuracy: overall (vqa_accuracy), mean over types (vqa_macro_accuracy),
    per type (vqa_<type>_accuracy) and counts (n_vqa, n_vqa_<type>)."""
    if not (len(answers) == len(truths) == len(qtypes)):
        raise ValueError("answers, truths and qtypes must have the same length")
    if not answers:
        return {}
    per_type: dict[str, list[bool]] = defaultdict(list)
    for a, t, q in zip(answers, truths, qtypes):
        per_type[q].append(normalize_answer(a) == normalize_answer(t))
    out: dict[str, float] = {
        "vqa_accuracy": float(np.mean([x for v in per_type.values() for x in v])),
        "vqa_macro_accuracy": float(np.mean([np.mean(v) for v in per_type.values()])),
        "n_vqa": len(answers),
    }
    for q in sorted(per_type):
        out[vqa_key(q)] = float(np.mean(per_type[q]))
        out[vqa_count_key(q)] = len(per_type[q])
    return out


def parse_yes_no(answer: str) -> str | None:
    """"yes" / "no" when the answer starts with that word, else None (unparsed)."""
    words = normalize_answer(answer).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def pope_metrics(predicted_yes: Sequence[bool], truth_yes: Sequence[bool]) -> dict[str, float]:
    """POPE accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    Precision (recall) is 0 when nothing is predicted (truly) positive, and F1 0 when both are 0,
    so every value is a number in [0, 1].
    """
    pred = np.asarray(predicted_yes, dtype=bool)
    truth = np.asarray(truth_yes, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 1 or not len(pred):
        raise ValueError("pope_metrics needs two non-empty sequences of the same length")
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((pred == truth).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": float(pred.mean()),
        "n": len(pred),
    }


# ---------------------------------------------------------------------------------------------
# Modality gap
# ---------------------------------------------------------------------------------------------
def modality_stats(image_emb: np.ndarray, text_emb: np.ndarray, paired: np.ndarray) -> dict[str, float]:
    """Cosine statistics of image (I, d) and text (T, d) embeddings; paired: (T, I) bool.

    paired_cosine / unpaired_cosine: mean cosine over paired / unpaired (text, image) pairs;
    modality_gap = paired_cosine - unpaired_cosine (how much closer a photo is to its own caption
    than to the others; can be negative); modality_centroid_distance = |mean image - mean text|
    (the "modality gap" of Liang et al. 2022).
    """
    img = _unit(image_emb)
    txt = _unit(text_emb)
    paired = np.asarray(paired, dtype=bool)
    if paired.shape != (len(txt), len(img)):
        raise ValueError(f"paired must be (texts, images) = {(len(txt), len(img))}, got {paired.shape}")
    if not paired.any() or paired.all():
        raise ValueError("modality_stats needs both paired and unpaired (text, image) pairs")
    cos = txt @ img.T
    p, u = float(cos[paired].mean()), float(cos[~paired].mean())
    return {
        "paired_cosine": p,
        "unpaired_cosine": u,
        "modality_gap": p - u,
        "modality_centroid_distance": float(np.linalg.norm(img.mean(0) - txt.mean(0))),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def stratified_sample(items: Sequence[T], key: Mapping[int, Hashable] | Sequence[Hashable], n: int | None, seed: int = 0) -> list[T]:
    """Up to n items, balanced across strata: each stratum is shuffled with a seed of its own and the
    strata are taken round-robin (in order of first appearance) until n are drawn. n=None keeps all.
    The result keeps the input order, so it is deterministic for (items, n, seed)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    strata: dict[Hashable, list[int]] = defaultdict(list)
    for i in range(len(items)):
        strata[key[i]].append(i)
    for s, idx in strata.items():
        random.Random(f"cafe-eval:{seed}:{s}").shuffle(idx)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for idx in strata.values():
            if depth < len(idx) and len(chosen) < n:
                chosen.append(idx[depth])
        depth += 1
    return [items[i] for i in sorted(chosen)]
