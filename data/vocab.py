"""The one home of the sample world's vocabulary, question templates and split rules.

Everything that talks to the sample world (generator, trainer, evaluator, app, outside checks)
imports these names instead of spelling the words again.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "black")
# Horizontal thirds of the photo, left to right; at most one object per third.
POSITIONS: tuple[str, ...] = ("left", "middle", "right")

SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")

# (color, shape) pairs that never occur in train/val/test photos (nor in their questions or probes):
# the compositional split is made of exactly these. Four distinct colors and all four shapes, so
# every shape is held out once while train still shows every color and every shape in other pairs.
COMPOSITIONAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "star"),
    ("orange", "square"),
    ("green", "triangle"),
    ("blue", "circle"),
)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
# Pairs seen by train (and by the in-distribution val/test splits).
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in COMPOSITIONAL_PAIRS)

# Combinations the world never draws: yellow is unreadable on white.
FORBIDDEN_ON_BACKGROUND: dict[str, frozenset[str]] = {"white": frozenset({"yellow"})}

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

# Question templates. Answers are lowercase and short.
DESCRIBE_QUESTION = "Describe the photo."
COLOR_OF_SHAPE_QUESTION = "What color is the {shape}?"
SHAPE_OF_COLOR_QUESTION = "What shape is the {color} object?"
COUNT_OBJECTS_QUESTION = "How many objects are in the photo?"
COUNT_SHAPE_QUESTION = "How many {shape}s are there?"
EXISTS_QUESTION = "Is there a {color} {shape} in the photo?"
BACKGROUND_QUESTION = "What color is the background?"
POSITION_QUESTIONS: dict[str, str] = {
    "left": "What is on the left?",
    "middle": "What is in the middle?",
    "right": "What is on the right?",
}
NOTHING_ANSWER = "nothing"

QTYPES: tuple[str, ...] = (
    "color_of_shape",
    "shape_of_color",
    "count_objects",
    "count_shape",
    "exists",
    "background",
    "position",
    "describe",
)
PROBE_KINDS: tuple[str, ...] = ("positive", "random", "popular", "adversarial")


def split_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """(color, shape) pairs whose objects may appear in photos of `split`."""
    check_split(split)
    return COMPOSITIONAL_PAIRS if split == "compositional" else SEEN_PAIRS


def probe_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """Pairs that questions/probes about absent objects may name in `split`.

    Train/val/test never mention a held-out pair, so the compositional pairs stay unseen even as
    text. The compositional split is test-only, so its negatives may name any pair.
    """
    check_split(split)
    return ALL_PAIRS if split == "compositional" else SEEN_PAIRS


def check_split(split: str) -> None:
    """Raise ValueError for a split name outside SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
