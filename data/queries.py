"""Sample-world texts beyond captions and the evaluation questions: what people type to find a photo,
texts that almost match it, what every text and photo is tagged with, and the extra question forms
that teach a reader positions and single attributes.

- Queries (`Query`: text + match tags, with "a"/"an" as people type them): one object ("a red
  circle", "a small red circle", "a red circle on the left", "a red circle on a gray background"),
  several objects ("a red circle and a blue star"), one attribute ("an orange object", "a star").
- Tags (`TAGS`): a text matches a photo when the photo has every tag the text names
  (`matches`). Photos carry every tag they could be named by; a text names only what it says, so a
  text that leaves something out (size, position) matches more photos, never fewer.
- Hard negatives (`hard_negatives`): a query's near misses that the photo does *not* show, each
  differing in one attribute: one color changed, one shape changed, two shapes swapped, two sizes
  swapped. They never name a (color, shape) pair the split keeps out of text.
- `training_questions`: attribute and position questions ("What color is the object on the left?",
  "What is left of the blue star?", "Where is the red circle?") that the evaluation does not ask.

Everything here is a pure function of a `PhotoSpec` (and an rng where a choice is made).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from data.vocab import (
    ALL_PAIRS,
    BACKGROUNDS,
    COLORS,
    NOTHING_ANSWER,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    SIZES,
    probe_pairs,
)
from data.world import (
    ALBUM_FORMS,
    QA,
    AlbumQA,
    PhotoSpec,
    WorldObject,
    join_phrases,
    object_phrase,
    position_phrase,
    referring_question_text,
)

# --------------------------------------------------------------------------------------------- tags
def color_tag(color: str) -> str:
    return f"color:{color}"


def shape_tag(shape: str) -> str:
    return f"shape:{shape}"


def background_tag(background: str) -> str:
    return f"bg:{background}"


def placed_tag(tag: str, position: str) -> str:
    """A tag at one position: "red circle@left", "small@right"."""
    return f"{tag}@{position}"


def kind_tag(color: str, shape: str, size: str | None = None) -> str:
    """The tag of an object kind: "red circle", or with its size "small red circle"."""
    return f"{size} {color} {shape}" if size else f"{color} {shape}"


KIND_TAGS = tuple(kind_tag(c, s) for c in COLORS for s in SHAPES)
SIZED_TAGS = tuple(kind_tag(c, s, z) for z in SIZES for c in COLORS for s in SHAPES)
COLOR_TAGS = tuple(color_tag(c) for c in COLORS)
SHAPE_TAGS = tuple(shape_tag(s) for s in SHAPES)
BACKGROUND_TAGS = tuple(background_tag(b) for b in BACKGROUNDS)
TAGS: tuple[str, ...] = KIND_TAGS + SIZED_TAGS + COLOR_TAGS + SHAPE_TAGS + BACKGROUND_TAGS
TAG_INDEX = {t: i for i, t in enumerate(TAGS)}


def a(phrase: str) -> str:
    """The phrase with its indefinite article: "a red circle", "an orange star"."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def image_tags(spec: PhotoSpec) -> frozenset[str]:
    """Every tag a photo can be named by: its kinds with and without size, colors, shapes, background."""
    tags = {background_tag(spec.background)}
    for o in spec.objects:
        tags |= {kind_tag(o.color, o.shape), kind_tag(o.color, o.shape, o.size), color_tag(o.color), shape_tag(o.shape)}
    return frozenset(tags)


# The labels a vision tower is pre-trained to predict (training/vision_pretrain.py). "kinds": each
# (color, shape) kind, each kind at each position, each background. "attributes": each color, shape and
# size at each position, each color and shape anywhere, each background, with no tag for a (color, shape)
# pair: a tower taught to see colors and shapes apart has nothing to memorise a pair by.
PROBE_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "kinds": KIND_TAGS + tuple(placed_tag(k, p) for k in KIND_TAGS for p in POSITIONS) + BACKGROUND_TAGS,
    "attributes": COLOR_TAGS + SHAPE_TAGS
    + tuple(placed_tag(a, p) for a in (*COLORS, *SHAPES, *SIZES) for p in POSITIONS) + BACKGROUND_TAGS,
}


def probe_labels(spec: PhotoSpec, labels: str = "kinds") -> frozenset[str]:
    """The labels of PROBE_LABEL_SETS[labels] that one photo has."""
    on = {background_tag(spec.background)}
    for o in spec.objects:
        if labels == "kinds":
            on |= {kind_tag(o.color, o.shape), placed_tag(kind_tag(o.color, o.shape), o.position)}
        else:
            on |= {color_tag(o.color), shape_tag(o.shape)} | {placed_tag(a, o.position) for a in (o.color, o.shape, o.size)}
    return frozenset(on)


def tag_vector(tags: Iterable[str]) -> np.ndarray:
    """(len(TAGS),) float32 multi-hot vector (the trainer's false-negative masking reads these)."""
    v = np.zeros(len(TAGS), dtype=np.float32)
    for t in tags:
        v[TAG_INDEX[t]] = 1.0
    return v


def matches(text_tags: Iterable[str], photo_tags: Iterable[str]) -> bool:
    """A text matches a photo when the photo has every tag the text names."""
    return set(text_tags) <= set(photo_tags)


# --------------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    """A retrieval text and the tags it names."""

    text: str
    tags: frozenset[str]


OBJECT_FORMS = ("plain", "sized", "placed", "background")


def object_query(obj: WorldObject, form: str = "plain", background: str | None = None) -> Query:
    """One object: "a red circle" (plain), "a small red circle" (sized), "a red circle on the left"
    (placed), "a red circle on a gray background" (background, which needs ``background``)."""
    tags = {kind_tag(obj.color, obj.shape)}
    kind = a(f"{obj.color} {obj.shape}")
    if form == "plain":
        text = kind
    elif form == "sized":
        text = object_phrase(obj)
        tags.add(kind_tag(obj.color, obj.shape, obj.size))
    elif form == "placed":
        text = f"{kind} {position_phrase(obj.position)}"
    elif form == "background":
        if background is None:
            raise ValueError("form 'background' needs the photo's background")
        text = f"{kind} on a {background} background"
        tags.add(f"bg:{background}")
    else:
        raise ValueError(f"unknown object query form {form!r}; expected one of {OBJECT_FORMS}")
    return Query(text, frozenset(tags))


def objects_query(objects: Sequence[WorldObject], sized: bool = False) -> Query:
    """Several objects in one photo: "a red circle and a blue star" (with sizes when ``sized``)."""
    if not objects:
        raise ValueError("objects_query needs at least one object")
    phrases = [object_phrase(o) if sized else a(f"{o.color} {o.shape}") for o in objects]
    tags = {kind_tag(o.color, o.shape, o.size if sized else None) for o in objects}
    if sized:
        tags |= {kind_tag(o.color, o.shape) for o in objects}
    return Query(join_phrases(phrases), frozenset(tags))


def pair_query(spec: PhotoSpec) -> Query:
    """The evaluation's two-object query of a photo: its two leftmost objects, no sizes ("a red circle and
    a blue star"). It matches every photo that shows both kinds."""
    ordered = sorted(spec.objects, key=lambda o: POSITIONS.index(o.position))
    if len(ordered) < 2:
        raise ValueError(f"photo {spec.id} has fewer than two objects")
    return objects_query(ordered[:2])


def attribute_query(obj: WorldObject, attribute: str) -> Query:
    """One attribute of an object alone: "a purple object" (color) or "a star" (shape)."""
    if attribute == "color":
        return Query(a(f"{obj.color} object"), frozenset({f"color:{obj.color}"}))
    if attribute == "shape":
        return Query(a(obj.shape), frozenset({f"shape:{obj.shape}"}))
    raise ValueError(f"unknown attribute {attribute!r}; expected color or shape")


def _swap(objects: list[WorldObject], i: int, j: int, field: str) -> list[WorldObject]:
    out = list(objects)
    a, b = out[i], out[j]
    out[i] = WorldObject(**{**vars(a), field: getattr(b, field)})
    out[j] = WorldObject(**{**vars(b), field: getattr(a, field)})
    return out


def hard_negatives(spec: PhotoSpec, named: Sequence[WorldObject], sized: bool = False,
                   render: Callable[[list[WorldObject]], Query] | None = None) -> list[Query]:
    """Queries one attribute away from the query that names ``named`` that ``spec`` does not match.

    Changes: one object's color, one object's shape, two objects' shapes swapped, and (sized) two
    objects' sizes swapped or one object's size flipped. Only (color, shape) pairs the split may name
    appear (``probe_pairs``); every result is checked against the photo's tags. ``render`` writes the
    changed objects in the original query's form (default: ``objects_query(objects, sized)``).
    """
    render = render or (lambda objs: objects_query(objs, sized))
    allowed = set(probe_pairs(spec.split))
    have = image_tags(spec)
    named = list(named)
    variants: list[list[WorldObject]] = []
    for i, o in enumerate(named):
        variants += [named[:i] + [WorldObject(o.shape, c, o.size, o.position)] + named[i + 1:] for c in COLORS if c != o.color]
        variants += [named[:i] + [WorldObject(s, o.color, o.size, o.position)] + named[i + 1:] for s in SHAPES if s != o.shape]
        if sized:
            flipped = SIZES[1 - SIZES.index(o.size)]
            variants.append(named[:i] + [WorldObject(o.shape, o.color, flipped, o.position)] + named[i + 1:])
    for i in range(len(named)):
        for j in range(i + 1, len(named)):
            if named[i].shape != named[j].shape:
                variants.append(_swap(named, i, j, "shape"))
            if sized and named[i].size != named[j].size:
                variants.append(_swap(named, i, j, "size"))
    out: dict[str, Query] = {}
    for objs in variants:
        if any(o.pair not in allowed for o in objs) or len({o.pair for o in objs}) < len(objs):
            continue
        q = render(objs)
        if not matches(q.tags, have):
            out.setdefault(q.text, q)
    return list(out.values())


# --------------------------------------------------------------------------------------------- questions
def _left_right(spec: PhotoSpec) -> list[QA]:
    ordered = sorted(spec.objects, key=lambda o: POSITIONS.index(o.position))
    out = []
    for i, o in enumerate(ordered):
        name = f"the {o.color} {o.shape}"
        left = object_phrase(ordered[i - 1]) if i > 0 else NOTHING_ANSWER
        right = object_phrase(ordered[i + 1]) if i + 1 < len(ordered) else NOTHING_ANSWER
        out.append(QA(f"What is left of {name}?", left, "left_of"))
        out.append(QA(f"What is right of {name}?", right, "right_of"))
    return out


def training_questions(spec: PhotoSpec) -> list[QA]:
    """Attribute and position questions about spec, for training only (qtypes below), in a fixed order.

    color_at / shape_at / size_at: "What color is the object on the left?" -> "red"; where: "Where is
    the red circle?" -> "on the left"; left_of / right_of: "What is left of the blue star?" -> "a small
    red circle" or "nothing"; is_color: "Is the star red?" -> yes/no, asked only with colors that the
    split may name with that shape.
    """
    qa: list[QA] = []
    by_pos = {o.position: o for o in spec.objects}
    for pos in POSITIONS:
        o = by_pos.get(pos)
        where = position_phrase(pos)
        qa.append(QA(f"What color is the object {where}?", o.color if o else NOTHING_ANSWER, "color_at"))
        qa.append(QA(f"What shape is {where}?", o.shape if o else NOTHING_ANSWER, "shape_at"))
        if o is not None:
            qa.append(QA(f"What size is the object {where}?", o.size, "size_at"))
    for o in spec.objects:
        qa.append(QA(f"Where is the {o.color} {o.shape}?", position_phrase(o.position), "where"))
    qa += _left_right(spec)
    allowed = set(probe_pairs(spec.split))
    shapes = [o.shape for o in spec.objects]
    for o in spec.objects:
        if shapes.count(o.shape) != 1:
            continue
        qa.append(QA(f"Is the {o.shape} {o.color}?", "yes", "is_color"))
        others = [c for c in COLORS if c != o.color and (c, o.shape) in allowed]
        if others:
            other = random.Random(f"cafe-world:is-color:{spec.id}:{o.shape}").choice(others)
            qa.append(QA(f"Is the {o.shape} {other}?", "no", "is_color"))
    return qa


# --------------------------------------------------------------------------------------------- questions no album answers
# Questions a photo assistant over sample-world albums must refuse: general knowledge, chit-chat,
# and photos of things the sample world has no words for.
OFF_TOPIC_QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "How far is the moon from the earth?",
    "What is 17 times 23?",
    "Can you recommend a good pizza place?",
    "What's the weather like tomorrow?",
    "Hi, how are you?",
    "Tell me a joke.",
    "Thanks, that's all!",
    "What time is it?",
    "Translate 'good morning' into Spanish.",
    "Who won the football world cup in 2018?",
    "How do I reset my password?",
    "Write a poem about autumn.",
    "What is the boiling point of water?",
    "What breed is the dog on the beach?",
    "Who is in the photo of my sister's wedding?",
    "What does the street sign in the picture from Paris say?",
    "How old is the baby in the birthday photo?",
    "What is written on my passport scan?",
    "Show me photos of my cat.",
    "Find pictures of the Eiffel Tower.",
    "What color is the car in the photo with the mountain?",
    "How many people are in the picture of the family dinner?",
    "Where was the photo with the sunset taken?",
    "What is the man holding in the image with the bicycle?",
    "Are there any photos of snow in the mountains?",
    "What kind of flowers are in the photo with the vase?",
    "Which restaurant is in the photo with the menu?",
    "What is on the plate in the picture of my breakfast?",
    "Who is the person wearing glasses in the group photo?",
    "What is the name of the beach in the holiday photos?",
)


def unanswerable_questions(specs: Sequence[PhotoSpec], rng: random.Random, n: int = 100) -> list[AlbumQA]:
    """Album questions in the album templates that name a thing no photo of ``specs`` shows: a (color,
    shape), or a (size, color, shape) of a kind that only appears in the other size, alone or beside a
    thing that is there. ``photo_ids`` is empty and ``refers_to`` holds what is named; the right response
    is a refusal naming the missing thing."""
    have_pairs = {o.pair for s in specs for o in s.objects}
    have_sized = {(o.color, o.shape, o.size) for s in specs for o in s.objects}
    absent: list[tuple[str, str, str | None]] = [(c, s, None) for c, s in ALL_PAIRS if (c, s) not in have_pairs]
    absent += [(c, s, z) for c, s in sorted(have_pairs) for z in SIZES if (c, s, z) not in have_sized]
    if not absent:
        return []
    present = sorted({(o.color, o.shape, None) for s in specs for o in s.objects})
    out: list[AlbumQA] = []
    while len(out) < n:
        missing = rng.choice(absent)
        reqs = [missing] if rng.random() < 0.5 or not present else rng.sample([missing, rng.choice(present)], 2)
        form = rng.choice(ALBUM_FORMS)
        question = referring_question_text(reqs, form, rng.choice(POSITIONS))
        out.append(AlbumQA(question, "", (), qtype=f"unanswerable_{form}", refers_to=tuple(reqs)))
    return out


FOLLOWUPS: tuple[tuple[str, str], ...] = (
    ("When was it taken?", "year"),
    ("What color is the background?", "background"),
    ("How many objects are in it?", "count_objects"),
)


def followup_answer(spec: PhotoSpec, followup: str) -> str:
    """The true answer of a follow-up of FOLLOWUPS about this photo."""
    kind = dict(FOLLOWUPS)[followup]
    return {"year": str(spec.date.year), "background": spec.background,
            "count_objects": NUMBER_WORDS[len(spec.objects)]}[kind]


def followup_questions(specs: Sequence[PhotoSpec], questions: Sequence[AlbumQA], rng: random.Random) -> list[dict]:
    """Two-turn conversations: an album question, then a follow-up about the same photo (FOLLOWUPS),
    with the follow-up's answer for that photo: {"first", "photo_id", "followup", "answer", "qtype"}."""
    by_id = {s.id: s for s in specs}
    out = []
    for q in questions:
        spec = by_id[q.photo_ids[0]]
        followup, kind = rng.choice(FOLLOWUPS)
        out.append({"first": q.question, "photo_id": spec.id, "followup": followup,
                    "answer": followup_answer(spec, followup), "qtype": f"followup_{kind}"})
    return out
