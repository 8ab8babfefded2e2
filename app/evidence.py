"""Does a photo show what a question says it shows? Asked of the same model that will answer.

Before a retrieved photo is cited, the generator is asked about each thing the question names, each
question read from one forward pass as the probability of the answer (CafeModel.choice_probabilities):
- existence: "Is there a purple star in the photo?", P(yes) against P(no) (the POPE-style probe the
  CAFe model was trained to answer);
- attributes, for a thing named by a color and a shape: "What color is the star?" (P(purple) among the
  colors) and "What shape is the purple object?" (P(star) among the shapes); the larger of the two
  counts. A photo with a purple triangle and a blue star may draw a "yes" for a purple star it does
  not show; asked what color its star is, the model says blue;
- size, for a thing named with one ("a small red square"): log P("a photo of a small red square") -
  log P("a photo of a large red square") under the describe instruction.
A photo is evidence only when every thing passes (AnswerConfig.min_yes, min_attribute,
min_size_margin; calibrated on the shipped model by benchmarks/calibrate.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from cafe_core import prompts
from data.vocab import COLOR_OF_SHAPE_QUESTION, COLORS, DESCRIBE_QUESTION, EXISTS_QUESTION, SHAPE_OF_COLOR_QUESTION, SHAPES

# A size word and the one a photo of the other size would be described with.
SIZE_OPPOSITES = {"small": "large", "large": "small", "big": "small", "tiny": "large", "little": "large"}
_SIZE = re.compile(r"\b(" + "|".join(SIZE_OPPOSITES) + r")\s+", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
# The sample world's POPE probe (data.vocab.EXISTS_QUESTION: "Is there a {color} {shape} in the photo?"),
# which the shipped model was trained to answer; it always writes "a" ("a orange circle"), and that model
# answers "an orange circle" far less reliably (P(yes) 0.03-0.18 on photos that show one), while a
# general model reads the slip as meant.
PROBE = EXISTS_QUESTION.replace("{color} {shape}", "{thing}")


def without_size(part: str) -> str:
    """"a small red square" -> "a red square" (the existence probe asks for the thing, any size)."""
    return _SIZE.sub("", part, count=1)


def probe(part: str) -> str:
    """The existence question for a part: "an orange circle" -> "Is there a orange circle in the photo?";
    a part without an article is asked as it is ("Is there my dog in the photo?")."""
    thing = without_size(part)
    if _ARTICLE.match(thing):
        return PROBE.format(thing=_ARTICLE.sub("", thing))
    return f"Is there {thing} in the photo?"


def other_size(part: str) -> str | None:
    """"a small red square" -> "a large red square"; None when the part names no size."""
    m = _SIZE.search(part)
    if not m:
        return None
    return part[: m.start(1)] + SIZE_OPPOSITES[m.group(1).lower()] + part[m.end(1):]


_COLOR_SHAPE = re.compile(r"\b(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")\b", re.IGNORECASE)


def color_and_shape(part: str) -> tuple[str, str] | None:
    """("purple", "star") for "a small purple star"; None when the part names no (color, shape)."""
    m = _COLOR_SHAPE.search(part)
    return (m.group(1).lower(), m.group(2).lower()) if m else None


@dataclass
class PhotoEvidence:
    """What the model says one photo shows of each part: P(yes) of its probe, the attribute check, and for
    sized parts the size margin (nats; > 0 favours the named size). An attribute or size value is None
    where it was not asked: the part names no (color, shape) or no size, or (unless the check was asked
    to be complete) an earlier question already failed the part. The attribute value is then P(color)
    alone when that passed, so the shape question was not needed."""

    p_yes: list[float]
    size_margin: list[float | None]
    passed: list[bool] = field(default_factory=list)
    p_attribute: list[float | None] = field(default_factory=list)

    @property
    def shows_all(self) -> bool:
        return bool(self.passed) and all(self.passed)


def part_passes(p_yes: float, size_margin: float | None, p_attribute: float | None, min_yes: float,
                min_size_margin: float, min_attribute: float) -> bool:
    """The rule for one named thing: its probe, and where they apply its size margin and attribute check."""
    return (p_yes >= min_yes and (size_margin is None or size_margin >= min_size_margin)
            and (p_attribute is None or p_attribute >= min_attribute))


class EvidenceChecker:
    """Judges photos against the parts a question names (see module doc).

    The questions about one photo share its prompt beginning (CafeModel.sharing_image_prefixes), so the
    photo goes through the model once and each question costs its own few tokens. Questions run in
    order of cost, each only where it can still change the verdict: the probe for every (photo, part),
    the color question where the probe passed, the shape question where the color one failed (the rule
    takes the larger), the size likelihoods last. ``complete=True`` asks everything (calibration needs
    every value); the verdicts are the same either way.
    """

    def __init__(self, model, min_yes: float, min_size_margin: float, min_attribute: float = 0.0):
        self.model, self.min_yes, self.min_size_margin = model, min_yes, min_size_margin
        self.min_attribute = min_attribute

    def check(self, parts: Sequence[str], images: Sequence[Image.Image], complete: bool = False) -> list[PhotoEvidence]:
        """One PhotoEvidence per image."""
        parts, images = list(parts), list(images)
        if not parts or not images:
            return [PhotoEvidence([], []) for _ in images]
        with self.model.sharing_image_prefixes():
            questions = [probe(p) for _ in images for p in parts]
            p_yes = self.model.choice_probabilities(questions, [im for im in images for _ in parts])[:, 0]
            p_yes = p_yes.reshape(len(images), len(parts))
            open_ = np.ones_like(p_yes, dtype=bool) if complete else p_yes >= self.min_yes
            attribute = self._attributes(parts, images, open_, complete)
            if not complete:
                open_ &= np.isnan(attribute) | (attribute >= self.min_attribute)
            margins = self._size_margins(parts, images, open_)
        out = []
        for i in range(len(images)):
            size = [None if np.isnan(m) else float(m) for m in margins[i]]
            attr = [None if np.isnan(a) else float(a) for a in attribute[i]]
            passed = [part_passes(float(p), m, a, self.min_yes, self.min_size_margin, self.min_attribute)
                      for p, m, a in zip(p_yes[i], size, attr)]
            out.append(PhotoEvidence([float(p) for p in p_yes[i]], size, passed, attr))
        return out

    def _attributes(self, parts: list[str], images: list, asked: np.ndarray, complete: bool) -> np.ndarray:
        """(images, parts): max of P(color | "What color is the <shape>?") and P(shape | "What shape is the
        <color> object?") where ``asked``; the shape question only where the color one fails, unless
        ``complete``. NaN for parts that name no (color, shape) and where not asked."""
        out = np.full(asked.shape, np.nan)
        named = [color_and_shape(p) for p in parts]
        cells = [(i, j) for i in range(len(images)) for j in range(len(parts)) if asked[i, j] and named[j]]
        if not cells:
            return out
        p_color = self.model.choice_probabilities(
            [COLOR_OF_SHAPE_QUESTION.format(shape=named[j][1]) for _, j in cells], [images[i] for i, _ in cells],
            COLORS)
        for (i, j), p in zip(cells, p_color):
            out[i, j] = p[COLORS.index(named[j][0])]
        cells = [(i, j) for i, j in cells if complete or out[i, j] < self.min_attribute]
        if cells:
            p_shape = self.model.choice_probabilities(
                [SHAPE_OF_COLOR_QUESTION.format(color=named[j][0]) for _, j in cells], [images[i] for i, _ in cells],
                SHAPES)
            for (i, j), p in zip(cells, p_shape):
                out[i, j] = max(out[i, j], p[SHAPES.index(named[j][1])])
        return out

    def _size_margins(self, parts: list[str], images: list, asked: np.ndarray) -> np.ndarray:
        """(images, parts): log P("a photo of <the part>") - log P("a photo of <it, the other size>") under the
        describe question where ``asked``; NaN for parts that name no size and where not asked."""
        out = np.full(asked.shape, np.nan)
        for j, part in enumerate(parts):
            flipped, rows = other_size(part), [i for i in range(len(images)) if asked[i, j]]
            if flipped is None or not rows:
                continue
            shown = [images[i] for i in rows]
            named = self.model.reply_logprob(DESCRIBE_QUESTION, prompts.describe_parts([part]), shown)
            other = self.model.reply_logprob(DESCRIBE_QUESTION, prompts.describe_parts([flipped]), shown)
            out[rows, j] = np.asarray(named) - np.asarray(other)
        return out


def missing_parts(parts: Sequence[str], evidence: Sequence[PhotoEvidence]) -> list[str]:
    """The parts no checked photo shows; every part when each shows on some photo but none shows them all."""
    if any(e.shows_all for e in evidence):
        return []
    missing = [p for j, p in enumerate(parts) if not any(e.passed and e.passed[j] for e in evidence)]
    return missing or list(parts)
