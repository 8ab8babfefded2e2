"""Sample-world training recipe: what each training sample says about its photo.

Only used with ``augment: sampleworld`` on a ``python -m data synth`` folder (its ground truth is read
once, as typed records, by ``data.synth.read_album``). Every random choice is seeded by (seed, epoch,
sample id), so a resumed run sees the same samples. With every knob added after the first recipe at
0, a sample is drawn exactly as that recipe drew it (same random sequence).

Contrastive text (one per sample, tagged with what it names so photos that also match are not used
as negatives; see data.queries): an album-style question (``p_question_caption``), a full caption
(``p_full_caption``), two or three of the photo's objects (``p_pair``), one attribute alone (``p_attribute``),
else one object in one of four forms. With ``p_hard`` an object-naming text also gets a hard negative:
the same text with one attribute changed, which the photo does not show.

Conversation (LM loss): the app's grounded-answer format (``p_grounded``; with ``p_multi_photo`` the
question's photo is shown among 1-2 others that share some of what it names, and the answer cites its
number), the describe turn (``caption_turn_prob``), ``max_qa_turns`` turns from the photo's QA pairs
and POPE probes (``p_yes_no`` makes them balanced yes/no probes), ``position_turns`` "What is on the
left?"-style turns, and ``extra_turns`` attribute/position turns (data.queries.training_questions).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cafe_core import prompts
from data.formats import Turn
from data.images import load_image
from data.queries import (
    OBJECT_FORMS,
    TAGS,
    Query,
    attribute_query,
    background_tag,
    hard_negatives,
    image_tags,
    kind_tag,
    object_query,
    objects_query,
    tag_vector,
    training_questions,
)
from data.synth import GROUND_TRUTH_FILE, AlbumPhoto, read_album
from data.vocab import DESCRIBE_QUESTION, POSITION_QUESTIONS
from data.world import ALBUM_FORMS, Requirement, referring_question

__all__ = ["TAGS", "Recipe", "AugmentedSample", "SampleWorldAugment"]

_DISTRACTOR_TRIES = 40


@dataclass
class Recipe:
    """The knobs of the sample-world recipe (TrainConfig carries them under the same names)."""

    max_qa_turns: int = 6
    caption_turn_prob: float = 0.3
    p_full_caption: float = 0.5  # contrastive text: a full caption
    p_question_caption: float = 0.0  # contrastive text: an album question naming the photo
    p_pair: float = 0.0  # contrastive text: 2-3 of the photo's objects ("a red circle and a blue star")
    p_attribute: float = 0.0  # contrastive text: one attribute ("a purple object", "a star")
    p_hard: float = 0.0  # chance an object-naming text gets a hard negative (one attribute changed)
    p_grounded: float = 0.0  # the conversation opens with the app's grounded-answer format
    p_multi_photo: float = 0.0  # ... showing 2-3 photos of which the question names one
    p_yes_no: float = 0.0  # a QA turn becomes a balanced yes/no probe
    position_turns: int = 0  # "What is on the left?" turns added per sample
    extra_turns: int = 0  # attribute/position turns (data.queries.training_questions) added per sample
    image_max_side: int = 512  # decode size of the extra photos of multi-photo prompts

    def validate(self) -> "Recipe":
        for name in ("caption_turn_prob", "p_full_caption", "p_question_caption", "p_pair", "p_attribute", "p_hard",
                     "p_grounded", "p_multi_photo", "p_yes_no"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be between 0 and 1")
        if self.p_full_caption + self.p_question_caption + self.p_pair + self.p_attribute > 1.0 + 1e-9:
            raise ValueError("p_full_caption + p_question_caption + p_pair + p_attribute must be at most 1 "
                             "(the rest of the contrastive texts name one object)")
        for name in ("max_qa_turns", "position_turns", "extra_turns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        return self


@dataclass
class AugmentedSample:
    """A training sample as the recipe rewrote it. ``images`` are the conversation's photos in order;
    ``image`` (= ``images[embed_image]``) is the one the contrastive text is paired with."""

    id: str
    image: object
    conversation: list
    caption: str
    text_tags: np.ndarray
    image_tags: np.ndarray
    images: list = field(default_factory=list)
    embed_image: int = 0
    hard_caption: str | None = None
    hard_tags: np.ndarray | None = None

    def __post_init__(self):
        if not self.images:
            self.images = [self.image]


def _unsized(named) -> list[str]:
    return [kind_tag(c, s) for c, s in named]


class SampleWorldAugment:
    """Rewrites each sample's contrastive text and conversation from the sample world's ground truth."""

    def __init__(self, data_dir: str | Path, seed: int, recipe: Recipe | None = None):
        path = Path(data_dir)
        if not (path / GROUND_TRUTH_FILE).exists():
            raise FileNotFoundError(f"augment: sampleworld needs {path / GROUND_TRUTH_FILE} (a `python -m data synth` folder)")
        self.album = read_album(path)
        self.photos = self.album.by_id()
        self.seed = seed
        self.recipe = (recipe or Recipe()).validate()
        # kind -> photo ids: distractors for multi-photo prompts share something with the question
        self._by_kind: dict[tuple[str, str], list[str]] = {}
        for p in self.album.photos:
            for o in p.spec.objects:
                self._by_kind.setdefault(o.pair, []).append(p.spec.id)

    # ---------------------------------------------------------------------------------- randomness
    def _rng(self, epoch: int, sample_id: str) -> random.Random:
        h = hashlib.sha256(f"{self.seed}|{epoch}|{sample_id}".encode()).digest()
        return random.Random(int.from_bytes(h[:8], "little"))

    @staticmethod
    def _referring(photo: AlbumPhoto, rng: random.Random) -> tuple[tuple[Requirement, ...], list[str]]:
        """A description of the photo by 1-2 of its objects (sometimes with size) + the tags it names."""
        objects = list(photo.spec.objects)
        objs = rng.sample(objects, min(len(objects), rng.choice((1, 1, 2))))
        sized = rng.random() < 0.3
        reqs = tuple((o.color, o.shape, o.size if sized else None) for o in objs)
        return reqs, _unsized(o.pair for o in objs)

    # ---------------------------------------------------------------------------------- the sample
    def __call__(self, sample, epoch: int):
        photo = self.photos.get(sample.id)
        if photo is None or sample.image is None:
            return sample
        r = self.recipe
        rng = self._rng(epoch, sample.id)
        spec = photo.spec
        img_tags = tag_vector(image_tags(spec))

        caption, named, hard_options = self._contrastive_text(photo, rng)
        conversation, images, embed_image = self._conversation(photo, sample.image, rng)
        hard = None
        if r.p_hard > 0 and hard_options is not None and rng.random() < r.p_hard:
            options = hard_options()
            hard = rng.choice(options) if options else None
        return AugmentedSample(
            sample.id, sample.image, conversation, caption, tag_vector(named), img_tags, images, embed_image,
            hard.text if hard else None, tag_vector(hard.tags) if hard else None,
        )

    def _contrastive_text(self, photo: AlbumPhoto, rng: random.Random):
        """(text, tags it names, its hard negatives as a thunk, or None for texts that get none)."""
        r, spec = self.recipe, photo.spec
        u = rng.random()
        if u < r.p_question_caption:  # the questions people ask the album retrieve their photo too
            reqs, named = self._referring(photo, rng)
            text, _ = referring_question(spec, reqs, rng.choice(ALBUM_FORMS), rng)
            return text, named, None
        u -= r.p_question_caption
        if u < r.p_full_caption:
            text = rng.choice(photo.captions)
            return text, _unsized(o.pair for o in spec.objects) + [background_tag(spec.background)], None
        u -= r.p_full_caption
        if u < r.p_pair and len(spec.objects) >= 2:
            objs = rng.sample(list(spec.objects), rng.randint(2, len(spec.objects)))
            sized = rng.random() < 0.3
            q = objects_query(objs, sized)
            return q.text, q.tags, lambda: hard_negatives(spec, objs, sized)
        u -= r.p_pair
        if u < r.p_attribute:
            q = attribute_query(rng.choice(spec.objects), rng.choice(("color", "shape")))
            return q.text, q.tags, None
        # One object in one of four forms, written as the first recipe wrote them ("a" before every color).
        o = rng.choice(spec.objects)
        form = OBJECT_FORMS[rng.randrange(4)]

        def render(objs) -> Query:
            q = object_query(objs[0], form, spec.background)
            return q if form == "sized" else Query("a " + q.text.split(" ", 1)[1], q.tags)

        named = [kind_tag(o.color, o.shape)] + ([background_tag(spec.background)] if form == "background" else [])
        return render([o]).text, named, lambda: hard_negatives(spec, [o], form == "sized", render)

    def _conversation(self, photo: AlbumPhoto, image, rng: random.Random) -> tuple[list[Turn], list, int]:
        """(turns, the conversation's images, index of this sample's photo among them)."""
        r, spec = self.recipe, photo.spec
        qa = [q for q in photo.qa if q.qtype != "describe"]
        if r.p_yes_no > 0:  # balanced yes/no turns: the answer must come from the image, not the prior
            pool = [(q.question, q.answer) for q in qa if q.qtype != "exists"]
            yes_no = [(q.question, q.answer) for q in qa if q.qtype == "exists"]
            yes_no += [(p.question, p.answer) for p in photo.pope]
            by_answer = {a: [x for x in yes_no if x[1] == a] for a in ("yes", "no")}
        else:
            pool = [(q.question, q.answer) for q in qa] + [(p.question, p.answer) for p in photo.pope]
        turns: list[Turn] = []
        images, embed_image = [image], 0
        if rng.random() < r.p_grounded:  # the app's grounded-answer format, this photo cited
            if r.p_multi_photo > 0 and rng.random() < r.p_multi_photo:
                turns, images, embed_image = self._multi_photo_turns(photo, image, rng)
            else:
                reqs, _ = self._referring(photo, rng)
                q, a = referring_question(spec, reqs, rng.choice(ALBUM_FORMS), rng)
                content = prompts.grounded_user_content(q, [spec.date.isoformat()[:10]])
                turns += [Turn("user", content), Turn("assistant", prompts.cite(a, 1))]
        if rng.random() < r.caption_turn_prob:
            turns += [Turn("user", DESCRIBE_QUESTION), Turn("assistant", rng.choice(photo.captions))]
        picked = rng.sample(pool, min(r.max_qa_turns, len(pool)))
        if r.p_yes_no > 0:
            for i in range(len(picked)):
                if rng.random() < r.p_yes_no:
                    answers = by_answer["yes" if rng.random() < 0.5 else "no"] or yes_no
                    picked[i] = rng.choice(answers)
        if r.position_turns > 0:  # (questions not asked yet)
            positions = [(q.question, q.answer) for q in qa
                         if q.question in POSITION_QUESTIONS.values() and (q.question, q.answer) not in picked]
            picked += rng.sample(positions, min(r.position_turns, len(positions)))
        if r.extra_turns > 0:
            extra = [(q.question, q.answer) for q in training_questions(spec)]
            picked += rng.sample(extra, min(r.extra_turns, len(extra)))
            rng.shuffle(picked)
        for q, a in picked:
            turns += [Turn("user", q), Turn("assistant", a)]
        return turns, images, embed_image

    def _multi_photo_turns(self, photo: AlbumPhoto, image, rng: random.Random) -> tuple[list[Turn], list, int]:
        """A grounded question over 2-3 photos: this one and 1-2 that share part of what the question
        names (as retrieval would show them) but not all of it; the answer cites this photo's number."""
        reqs, _ = self._referring(photo, rng)
        wanted = 1 + (rng.random() < 0.5)
        others = self._distractors(photo, reqs, wanted, rng)
        n = rng.randrange(len(others) + 1)  # where this photo goes among the shown ones
        shown = others[:n] + [photo] + others[n:]
        images = [load_image(self.album.image_path(p), self.recipe.image_max_side) for p in others]
        images = images[:n] + [image] + images[n:]
        q, a = referring_question(photo.spec, reqs, rng.choice(ALBUM_FORMS), rng)
        content = prompts.grounded_user_content(q, [p.spec.date.isoformat()[:10] for p in shown])
        return [Turn("user", content), Turn("assistant", prompts.cite(a, n + 1))], images, n

    def _distractors(self, photo: AlbumPhoto, reqs, wanted: int, rng: random.Random) -> list[AlbumPhoto]:
        """Up to ``wanted`` other photos that do not show everything ``reqs`` names, preferring ones that
        show part of it (same kind, or a named kind in another size)."""
        def fits(p: AlbumPhoto) -> bool:
            have = {(o.color, o.shape, o.size) for o in p.spec.objects}
            return all(any((c, s) == (hc, hs) and z in (None, hz) for hc, hs, hz in have) for c, s, z in reqs)

        near = [i for c, s, _ in reqs for i in self._by_kind.get((c, s), [])]
        chosen: list[AlbumPhoto] = []
        for _ in range(_DISTRACTOR_TRIES):
            if len(chosen) == wanted:
                break
            pid = rng.choice(near) if near and rng.random() < 0.8 else rng.choice(self.album.photos).spec.id
            p = self.photos[pid]
            if pid != photo.spec.id and p not in chosen and not fits(p):
                chosen.append(p)
        return chosen
