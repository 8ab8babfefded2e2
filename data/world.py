"""The sample world: procedural photos of colored shapes, and everything true about them.

A photo is fully described by a `PhotoSpec` (objects, background, date, size, EXIF orientation).
Sampling is deterministic by (seed, split, index); rendering and the small visual jitter are
deterministic by the photo id, so any reader of ground_truth.json can re-render and re-derive
captions, questions and probes exactly.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data.atomic import atomic_write_bytes
from data.vocab import (
    BACKGROUND_QUESTION,
    BACKGROUNDS,
    COLOR_OF_SHAPE_QUESTION,
    COUNT_OBJECTS_QUESTION,
    COUNT_SHAPE_QUESTION,
    DESCRIBE_QUESTION,
    EXISTS_QUESTION,
    FORBIDDEN_ON_BACKGROUND,
    NOTHING_ANSWER,
    NUMBER_WORDS,
    POSITION_QUESTIONS,
    POSITIONS,
    SHAPE_OF_COLOR_QUESTION,
    SHAPES,
    SIZES,
    check_split,
    probe_pairs,
    split_pairs,
)

# ---------------------------------------------------------------------------------------------
# Appearance constants. Saturated hues far apart in RGB so red/orange/yellow survive JPEG at 96 px.
# ---------------------------------------------------------------------------------------------
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "orange": (250, 130, 10),
    "yellow": (245, 225, 35),
    "green": (35, 165, 55),
    "blue": (35, 85, 230),
    "purple": (145, 50, 200),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (243, 243, 243),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (4, 3), (3, 2), (16, 9))
ROTATED_FRACTION = 0.25  # share of photos stored rotated with an EXIF Orientation tag, as phones do
EXIF_ORIENTATIONS: tuple[int, ...] = (3, 6, 8)
DATE_START = datetime(2017, 1, 1)
DATE_END = datetime(2024, 12, 31, 23, 59, 59)
DEFAULT_SHORT_SIDE = 256
# Object extent relative to its cell (the third's width or the photo height, whichever is smaller).
SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.40, 0.50), "large": (0.74, 0.88)}
MAX_ROTATION_DEG = 12.0
JPEG_QUALITY_RANGE = (72, 95)
SUPERSAMPLE = 2  # draw at 2x and box-reduce: cheap anti-aliasing

# Render styles. "plain": the look the demo model was first trained on. "varied": what other cameras
# do to the same scene (more aspect ratios and resolutions, continuous sizes and placement within the
# slot, bigger rotations, slight overlaps, shade and lighting variation, blur, sensor noise, harder
# JPEG). "mixed": each photo is plain or varied, drawn by its index. Ground truth is exact in every style.
STYLES: tuple[str, ...] = ("plain", "varied", "mixed")
VARIED_ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (4, 3), (3, 2), (16, 9), (2, 1), (5, 4), (3, 4), (2, 3))
VARIED_SHORT_SIDE = (144, 448)
VARIED_SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.30, 0.54), "large": (0.64, 0.98)}
VARIED_OVERLAP = 0.12  # a large object may reach this share of the third into its neighbour's slot
VARIED_MAX_ROTATION_DEG = 22.0
VARIED_JPEG_QUALITY_RANGE = (35, 95)
VARIED_COLOR_JITTER = 22  # per channel, on top of a shared brightness factor
VARIED_OBJECT_BRIGHTNESS = (0.85, 1.1)
VARIED_BACKGROUND_SHIFT: dict[str, tuple[int, int]] = {"white": (-30, 8), "gray": (-30, 30), "black": (-12, 35)}
VARIED_LIGHTING = (0.78, 1.12)  # multiplicative light falloff across the photo (objects too)
VARIED_BLUR_RADIUS = (0.0, 1.4)  # px at stored size, half of the photos
VARIED_NOISE_SIGMA = (0.0, 7.0)  # px values, half of the photos

# EXIF tags (numbers from the EXIF 2.3 spec).
EXIF_ORIENTATION = 0x0112
EXIF_DATETIME = 0x0132
EXIF_IFD_POINTER = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"

# Stored pixels = upright pixels under the INVERSE of what ImageOps.exif_transpose applies.
_STORE_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


# ---------------------------------------------------------------------------------------------
# The world model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldObject:
    """One shape in a photo."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def pair(self) -> tuple[str, str]:
        """(color, shape): the identity used for uniqueness, splits and probes."""
        return (self.color, self.shape)


@dataclass(frozen=True)
class PhotoSpec:
    """Everything true about one photo. width/height are the upright size; orientation is the EXIF tag
    the JPEG is stored with (1 = stored upright)."""

    id: str
    objects: tuple[WorldObject, ...]
    background: str
    date: datetime
    width: int
    height: int
    orientation: int = 1
    split: str = "train"
    style: str = "plain"  # "plain" or "varied" (how it is drawn; see STYLES)

    def to_dict(self) -> dict:
        """JSON-ready dict (the ground-truth record without annotations)."""
        return {
            "id": self.id,
            "split": self.split,
            "objects": [vars(o).copy() for o in self.objects],
            "background": self.background,
            "date": self.date.isoformat(),
            "width": self.width,
            "height": self.height,
            "orientation": self.orientation,
            "style": self.style,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "PhotoSpec":
        """Inverse of to_dict (extra keys such as captions or qa are ignored)."""
        return cls(
            id=d["id"],
            objects=tuple(WorldObject(**{k: o[k] for k in ("shape", "color", "size", "position")}) for o in d["objects"]),
            background=d["background"],
            date=datetime.fromisoformat(d["date"]),
            width=int(d["width"]),
            height=int(d["height"]),
            orientation=int(d.get("orientation", 1)),
            split=d.get("split", "train"),
            style=d.get("style", "plain"),
        )


@dataclass(frozen=True)
class QA:
    """A question about one photo with its short lowercase answer."""

    question: str
    answer: str
    qtype: str


@dataclass(frozen=True)
class Probe:
    """A POPE-style yes/no probe "Is there a {color} {shape} in the photo?"."""

    question: str
    answer: str  # "yes" | "no"
    kind: str  # positive | random | popular | adversarial
    color: str = ""
    shape: str = ""


@dataclass(frozen=True)
class AlbumQA:
    """A question that names one photo of an album by its content."""

    question: str
    answer: str
    photo_ids: tuple[str, ...]
    qtype: str = ""
    # The objects (color, shape, size or None) that identify the photo; kept so a checker can
    # re-verify that exactly one photo matches.
    refers_to: tuple[tuple[str, str, str | None], ...] = field(default=())


def photo_id(seed: int, split: str, index: int, style: str = "plain") -> str:
    """Stable id of the index-th photo of (seed, split, style); also its file stem."""
    return f"{split}-{seed}-{index:05d}" if style == "plain" else f"{split}-{style}-{seed}-{index:05d}"


def _photo_rng(seed: int, split: str, index: int, style: str = "plain") -> random.Random:
    # Seeding with a str hashes it with SHA-512: stable across processes and PYTHONHASHSEED.
    key = f"cafe-world:{seed}:{split}:{index}" if style == "plain" else f"cafe-world:{style}:{seed}:{split}:{index}"
    return random.Random(key)


def photo_style(style: str, seed: int, split: str, index: int) -> str:
    """The style photo ``index`` is drawn in: ``style`` itself, or plain/varied (even odds) for "mixed"."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if style != "mixed":
        return style
    return random.Random(f"cafe-world:mixed:{seed}:{split}:{index}").choice(("plain", "varied"))


def _id_rng(photo_id_: str, purpose: str) -> random.Random:
    return random.Random(f"cafe-world:{purpose}:{photo_id_}")


def sample_photo_spec(seed: int, split: str, index: int, short_side: int = DEFAULT_SHORT_SIDE,
                      style: str = "plain") -> PhotoSpec:
    """The index-th photo of (seed, split, style). Independent of how many photos are drawn.

    ``short_side`` sets the plain style's size; varied photos draw theirs from VARIED_SHORT_SIDE.
    """
    check_split(split)
    style = photo_style(style, seed, split, index)
    rng = _photo_rng(seed, split, index, style)
    background = rng.choice(BACKGROUNDS)
    k = rng.randint(1, 3)
    positions = sorted(rng.sample(POSITIONS, k), key=POSITIONS.index)
    forbidden = FORBIDDEN_ON_BACKGROUND.get(background, frozenset())
    allowed = [p for p in split_pairs(split) if p[0] not in forbidden]
    pairs = rng.sample(allowed, k)  # distinct (color, shape) within a photo
    objects = tuple(
        WorldObject(shape=s, color=c, size=rng.choice(SIZES), position=pos) for (c, s), pos in zip(pairs, positions)
    )
    span = int((DATE_END - DATE_START).total_seconds())
    date = DATE_START + timedelta(seconds=rng.randrange(span))
    if style == "plain":
        aw, ah = rng.choice(ASPECT_RATIOS)
        height = short_side
        width = int(round(short_side * aw / ah))
    else:
        aw, ah = rng.choice(VARIED_ASPECT_RATIOS)
        short = rng.randint(*VARIED_SHORT_SIDE)
        width, height = (int(round(short * aw / ah)), short) if aw >= ah else (short, int(round(short * ah / aw)))
    orientation = rng.choice(EXIF_ORIENTATIONS) if rng.random() < ROTATED_FRACTION else 1
    return PhotoSpec(
        id=photo_id(seed, split, index, style),
        objects=objects,
        background=background,
        date=date,
        width=width,
        height=height,
        orientation=orientation,
        split=split,
        style=style,
    )


def sample_photo_specs(n: int, seed: int, split: str = "train", short_side: int = DEFAULT_SHORT_SIDE,
                       style: str = "plain") -> list[PhotoSpec]:
    """n photo specs of a split; the first m of n photos equal sample_photo_specs(m, ...)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if short_side < 32:
        raise ValueError(f"short_side must be >= 32 px, got {short_side}")
    return [sample_photo_spec(seed, split, i, short_side, style) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectLayout:
    """Where an object is drawn, in upright pixel coordinates."""

    cx: float
    cy: float
    extent: float  # diameter of the circle the shape is inscribed in
    angle: float  # degrees, counter-clockwise

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) bounding box of the inscribing circle."""
        r = self.extent / 2
        return (int(self.cx - r), int(self.cy - r), int(math.ceil(self.cx + r)), int(math.ceil(self.cy + r)))


def layout(spec: PhotoSpec) -> list[ObjectLayout]:
    """Pixel layout of each object of spec (same order as spec.objects); deterministic by spec.id.

    An object's centre always stays inside its third, so its position word is never ambiguous; in
    the varied style a large object may reach a little into the neighbouring third (slight overlaps).
    """
    rng = _id_rng(spec.id, "layout")
    varied = spec.style == "varied"
    sizes = VARIED_SIZE_RANGE if varied else SIZE_RANGE
    jitter = 0.9 if varied else 0.6
    w, h = spec.width, spec.height
    third = w / 3
    cell = min(third * (1 + VARIED_OVERLAP), h) if varied else min(third, h)
    max_angle = VARIED_MAX_ROTATION_DEG if varied else MAX_ROTATION_DEG
    out = []
    for obj in spec.objects:
        lo, hi = sizes[obj.size]
        extent = cell * rng.uniform(lo, hi)
        slack_x = max(0.0, (third - extent) / 2)
        slack_y = max(0.0, (h - extent) / 2)
        cx = (POSITIONS.index(obj.position) + 0.5) * third + rng.uniform(-jitter, jitter) * slack_x
        cy = h / 2 + rng.uniform(-jitter, jitter) * slack_y
        if varied:  # an overlapping object may reach into its neighbour's slot, never out of the photo
            cx = min(max(cx, extent / 2), w - extent / 2)
        out.append(ObjectLayout(cx=cx, cy=cy, extent=extent, angle=rng.uniform(-max_angle, max_angle)))
    return out


def _shape_polygon(shape: str, cx: float, cy: float, extent: float, angle_deg: float) -> list[tuple[float, float]]:
    r = extent / 2
    if shape == "square":
        # Side 0.8*extent: looks as big as the circle without leaving the cell when rotated.
        h = 0.4 * extent
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        # Equilateral, apex up; shifted down by R/4 so its bounding box is centred.
        R = 1.1 * r
        pts = [(R * math.cos(a), -R * math.sin(a) + R / 4) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
    elif shape == "star":
        # Five points; a fat inner radius keeps the star a star at 96 px.
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else 0.47 * r
            a = math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(a), -rad * math.sin(a) + 0.05 * r))
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    # Screen y points down, so a counter-clockwise turn is (x c + y s, -x s + y c).
    return [(cx + x * c + y * s, cy - x * s + y * c) for x, y in pts]


def _jitter_rgb(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _background(spec: PhotoSpec, rng: random.Random, scale: int) -> Image.Image:
    w, h = spec.width * scale, spec.height * scale
    # A shared brightness shift plus a tiny per-channel one: varied, yet gray stays gray (no tint).
    varied = spec.style == "varied"
    shift = rng.randint(*VARIED_BACKGROUND_SHIFT[spec.background]) if varied else rng.randint(-8, 8)
    base = np.array(_jitter_rgb(BACKGROUND_RGB[spec.background], rng, 2), dtype=np.float32) + shift
    theta = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(8, 30) if varied else rng.uniform(8, 18)  # plain: faint, a few percent of the range
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    ramp = (math.cos(theta) * xs + math.sin(theta) * ys) * amp  # (h, w)
    arr = np.clip(base[None, None, :] + ramp[:, :, None], 0, 255).astype(np.uint8)  # (h, w, 3)
    return Image.fromarray(arr, "RGB")


def _object_rgb(color: str, rng: random.Random, varied: bool) -> tuple[int, int, int]:
    if not varied:
        return _jitter_rgb(COLOR_RGB[color], rng, 8)
    gain = rng.uniform(*VARIED_OBJECT_BRIGHTNESS)
    shaded = tuple(int(round(v * gain)) for v in COLOR_RGB[color])
    return _jitter_rgb(shaded, rng, VARIED_COLOR_JITTER)  # type: ignore[arg-type]


def _camera_effects(img: Image.Image, rng: random.Random) -> Image.Image:
    """Varied style: uneven light over the whole scene, then (each half of the time) sensor noise and blur."""
    from PIL import ImageFilter

    w, h = img.size
    arr = np.asarray(img, dtype=np.float32)  # (h, w, 3)
    lo, hi = VARIED_LIGHTING
    a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
    theta = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    t = np.clip(0.5 + (math.cos(theta) * (xs - 0.5) + math.sin(theta) * (ys - 0.5)), 0.0, 1.0)  # (h, w)
    arr = arr * (a + (b - a) * t)[:, :, None]
    if rng.random() < 0.5:
        sigma = rng.uniform(*VARIED_NOISE_SIGMA)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, size=arr.shape)
        arr = arr + noise.astype(np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*VARIED_BLUR_RADIUS)))
    return out


def render_photo(spec: PhotoSpec) -> Image.Image:
    """The upright RGB photo of spec (before JPEG and EXIF rotation)."""
    rng = _id_rng(spec.id, "render")
    varied = spec.style == "varied"
    s = SUPERSAMPLE
    img = _background(spec, rng, s)
    draw = ImageDraw.Draw(img)
    pairs = list(zip(spec.objects, layout(spec)))
    if varied:
        rng.shuffle(pairs)  # which of two overlapping objects is in front
    for obj, lay in pairs:
        fill = _object_rgb(obj.color, rng, varied)
        cx, cy, e = lay.cx * s, lay.cy * s, lay.extent * s
        if obj.shape == "circle":
            r = e / 2
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, e, lay.angle), fill=fill)
    img = img.reduce(s) if s > 1 else img
    return _camera_effects(img, rng) if varied else img


def jpeg_quality(spec: PhotoSpec) -> int:
    """JPEG quality the photo is saved with (deterministic by id)."""
    return _id_rng(spec.id, "jpeg").randint(*(VARIED_JPEG_QUALITY_RANGE if spec.style == "varied" else JPEG_QUALITY_RANGE))


def encode_photo(spec: PhotoSpec) -> bytes:
    """JPEG bytes of spec: pixels stored rotated when orientation != 1, EXIF dates and orientation set."""
    img = render_photo(spec)
    if spec.orientation != 1:
        img = img.transpose(_STORE_TRANSPOSE[spec.orientation])
    exif = Image.Exif()
    stamp = spec.date.strftime(EXIF_DATE_FORMAT)
    exif[EXIF_ORIENTATION] = spec.orientation
    exif[EXIF_DATETIME] = stamp
    exif.get_ifd(EXIF_IFD_POINTER)[EXIF_DATETIME_ORIGINAL] = stamp
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=jpeg_quality(spec), exif=exif)
    return buf.getvalue()


def save_photo(spec: PhotoSpec, path: str | Path) -> None:
    """Write spec's JPEG to path atomically (see encode_photo)."""
    atomic_write_bytes(path, encode_photo(spec))


# ---------------------------------------------------------------------------------------------
# Language: phrases and captions
# ---------------------------------------------------------------------------------------------
_POSITION_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}


def object_phrase(obj: WorldObject) -> str:
    """'a small blue star'."""
    return f"a {obj.size} {obj.color} {obj.shape}"


def position_phrase(position: str) -> str:
    """'on the left' / 'in the middle' / 'on the right'."""
    return _POSITION_PHRASE[position]


def join_phrases(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ordered(spec: PhotoSpec) -> list[WorldObject]:
    return sorted(spec.objects, key=lambda o: POSITIONS.index(o.position))


def captions(spec: PhotoSpec) -> list[str]:
    """All caption paraphrases of spec; the first is the canonical one. Each names every object
    with its size, color and shape, and the background."""
    objs = _ordered(spec)
    phrases = [object_phrase(o) for o in objs]
    placed = [f"{object_phrase(o)} {position_phrase(o.position)}" for o in objs]
    n = len(objs)
    bg = spec.background
    noun = "object" if n == 1 else "objects"
    return [
        f"{join_phrases(placed)}, on a {bg} background",
        f"a photo of {join_phrases(phrases)} on a {bg} background",
        f"a {bg} background with {join_phrases(placed)}",
        f"{NUMBER_WORDS[n]} {noun} on a {bg} background: {join_phrases(phrases)}",
        "; ".join(f"{position_phrase(o.position)}, {object_phrase(o)}" for o in objs) + f"; {bg} background",
    ]


def caption(spec: PhotoSpec, rng: random.Random) -> str:
    """One caption paraphrase of spec, drawn with rng."""
    return rng.choice(captions(spec))


# ---------------------------------------------------------------------------------------------
# Questions about one photo
# ---------------------------------------------------------------------------------------------
def _exists_question(color: str, shape: str) -> str:
    return EXISTS_QUESTION.format(color=color, shape=shape)


def _adversarial_candidates(spec: PhotoSpec, candidates: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    colors = {o.color for o in spec.objects}
    shapes = {o.shape for o in spec.objects}
    return [p for p in candidates if p[0] in colors or p[1] in shapes]


def _absent_pairs(spec: PhotoSpec) -> list[tuple[str, str]]:
    present = {o.pair for o in spec.objects}
    return [p for p in probe_pairs(spec.split) if p not in present]


def questions(spec: PhotoSpec) -> list[QA]:
    """All question/answer pairs of spec, in a fixed order; deterministic by spec."""
    qa: list[QA] = [QA(DESCRIBE_QUESTION, captions(spec)[0], "describe")]
    shape_counts = Counter(o.shape for o in spec.objects)
    color_counts = Counter(o.color for o in spec.objects)
    for o in _ordered(spec):
        if shape_counts[o.shape] == 1:
            qa.append(QA(COLOR_OF_SHAPE_QUESTION.format(shape=o.shape), o.color, "color_of_shape"))
    for o in _ordered(spec):
        if color_counts[o.color] == 1:
            qa.append(QA(SHAPE_OF_COLOR_QUESTION.format(color=o.color), o.shape, "shape_of_color"))
    qa.append(QA(COUNT_OBJECTS_QUESTION, NUMBER_WORDS[len(spec.objects)], "count_objects"))
    for shape in SHAPES:
        qa.append(QA(COUNT_SHAPE_QUESTION.format(shape=shape), NUMBER_WORDS[shape_counts[shape]], "count_shape"))
    # Exists: one yes per object and as many no's, half of them hard (sharing a color or shape).
    rng = _id_rng(spec.id, "exists")
    absent = _absent_pairs(spec)
    hard = _adversarial_candidates(spec, absent)
    negatives: list[tuple[str, str]] = []
    for _ in spec.objects:
        pool = [p for p in (hard if rng.random() < 0.5 and hard else absent) if p not in negatives]
        pool = pool or [p for p in absent if p not in negatives]
        if pool:
            negatives.append(rng.choice(pool))
    exists = [QA(_exists_question(*o.pair), "yes", "exists") for o in spec.objects]
    exists += [QA(_exists_question(c, s), "no", "exists") for c, s in negatives]
    rng.shuffle(exists)
    qa += exists
    qa.append(QA(BACKGROUND_QUESTION, spec.background, "background"))
    by_pos = {o.position: o for o in spec.objects}
    for pos in POSITIONS:
        answer = object_phrase(by_pos[pos]) if pos in by_pos else NOTHING_ANSWER
        qa.append(QA(POSITION_QUESTIONS[pos], answer, "position"))
    return qa


# ---------------------------------------------------------------------------------------------
# POPE probes
# ---------------------------------------------------------------------------------------------
def object_counts(specs: Iterable[PhotoSpec]) -> Counter:
    """How many photos contain each (color, shape): the 'popular' statistic for POPE."""
    return Counter(o.pair for spec in specs for o in spec.objects)


def pope_probes(spec: PhotoSpec, rng: random.Random, popular_counts: Mapping[tuple[str, str], int]) -> list[Probe]:
    """POPE probes of spec: one positive per object, and per negative kind as many negatives (fewer
    when the pool runs out). Negatives are absent from the photo:
    random = uniform over absent pairs; popular = the most frequent absent pairs in popular_counts;
    adversarial = absent pairs with the same shape in another color or the same color as another shape.
    """
    k = len(spec.objects)
    absent = _absent_pairs(spec)

    def probe(pair: tuple[str, str], answer: str, kind: str) -> Probe:
        return Probe(_exists_question(*pair), answer, kind, color=pair[0], shape=pair[1])

    out = [probe(o.pair, "yes", "positive") for o in spec.objects]
    out += [probe(p, "no", "random") for p in rng.sample(absent, min(k, len(absent)))]
    # Ties broken by vocabulary order so the popular set is deterministic.
    ranked = sorted(absent, key=lambda p: (-popular_counts.get(p, 0), probe_pairs(spec.split).index(p)))
    out += [probe(p, "no", "popular") for p in ranked[:k]]
    adversarial = _adversarial_candidates(spec, absent)
    out += [probe(p, "no", "adversarial") for p in rng.sample(adversarial, min(k, len(adversarial)))]
    return out


# ---------------------------------------------------------------------------------------------
# Album-level grounded questions
# ---------------------------------------------------------------------------------------------
Requirement = tuple[str, str, Optional[str]]  # (color, shape, size or None)


def _matching_ids(index: Mapping[tuple, set[str]], reqs: Sequence[Requirement]) -> set[str]:
    sets = [index.get(r if r[2] is not None else r[:2], set()) for r in reqs]
    return set.intersection(*sets) if sets else set()


def _album_index(specs: Sequence[PhotoSpec]) -> dict[tuple, set[str]]:
    # (color, shape) -> ids and (color, shape, size) -> ids, so uniqueness is a set intersection.
    index: dict[tuple, set[str]] = {}
    for spec in specs:
        for o in spec.objects:
            index.setdefault(o.pair, set()).add(spec.id)
            index.setdefault((*o.pair, o.size), set()).add(spec.id)
    return index


def _describe_reqs(reqs: Sequence[Requirement]) -> str:
    return join_phrases([f"the {z + ' ' if z else ''}{c} {s}" for c, s, z in reqs])


def _candidate_reqs(spec: PhotoSpec, rng: random.Random) -> list[tuple[Requirement, ...]]:
    """Descriptions of spec from least to most specific (one object, one sized object, two
    objects, two sized objects, ... up to every object with its size)."""
    objs = list(spec.objects)
    rng.shuffle(objs)
    out: list[tuple[Requirement, ...]] = []
    for k in range(1, len(objs) + 1):
        for combo in itertools.combinations(objs, k):
            out.append(tuple((o.color, o.shape, None) for o in combo))
        for combo in itertools.combinations(objs, k):
            out.append(tuple((o.color, o.shape, o.size) for o in combo))
    return out


ALBUM_FORMS = ("background", "count_objects", "year", "position")


def referring_question_text(reqs: Sequence[Requirement], form: str, position: str = "left") -> str:
    """The question of ``form`` (ALBUM_FORMS) naming its photo by ``reqs``; position: the slot a
    "position" question asks about."""
    return album_question(form, f"the photo with {_describe_reqs(reqs)}", position)


def album_question(form: str, the: str, position: str = "left") -> str:
    """The album question of ``form`` (ALBUM_FORMS) about the photo ``the`` names ("the photo with the red
    circle"): the wording the grounded answers are trained on, and follow-ups are rewritten into."""
    if form == "background":
        return f"What color is the background in {the}?"
    if form == "count_objects":
        return f"How many objects are in {the}?"
    if form == "year":
        return f"In what year was {the} taken?"
    if form != "position":
        raise ValueError(f"unknown album question form {form!r}")
    return f"What is {position_phrase(position)} in {the}?"


def referring_question(spec: PhotoSpec, reqs: Sequence[Requirement], form: str, rng: random.Random) -> tuple[str, str]:
    """A question about ``spec`` that names it by its content (``reqs``): ``(question, answer)``.

    ``form`` is one of ALBUM_FORMS; the year is not visible in the pixels (it comes from EXIF), so a
    grounded answerer must read it from the photo's metadata.
    """
    if form == "background":
        return referring_question_text(reqs, form), spec.background
    if form == "count_objects":
        return referring_question_text(reqs, form), NUMBER_WORDS[len(spec.objects)]
    if form == "year":
        return referring_question_text(reqs, form), str(spec.date.year)
    if form != "position":
        raise ValueError(f"unknown album question form {form!r}")
    pos = rng.choice(POSITIONS)
    by_pos = {o.position: o for o in spec.objects}
    a = object_phrase(by_pos[pos]) if pos in by_pos else NOTHING_ANSWER
    return referring_question_text(reqs, form, pos), a


def album_questions(specs: Sequence[PhotoSpec], rng: random.Random, max_questions: int | None = None) -> list[AlbumQA]:
    """Questions that name a photo by its content ("... in the photo with the purple star?").

    A question is only asked when exactly one photo of `specs` matches its description; its
    photo_ids is that photo's id. At most one question per photo, max_questions in all
    (default: len(specs)).
    """
    limit = len(specs) if max_questions is None else max_questions
    if len({s.id for s in specs}) != len(specs):
        raise ValueError("album_questions needs distinct photo ids")
    index = _album_index(specs)
    order = list(specs)
    rng.shuffle(order)
    out: list[AlbumQA] = []
    for spec in order:
        if len(out) >= limit:
            break
        reqs = next((r for r in _candidate_reqs(spec, rng) if len(_matching_ids(index, r)) == 1), None)
        if reqs is None:
            continue
        form = rng.choice(ALBUM_FORMS)
        q, a = referring_question(spec, reqs, form, rng)
        out.append(AlbumQA(q, a, (spec.id,), qtype=f"album_{form}", refers_to=tuple(reqs)))
    return out


def photos_matching(specs: Sequence[PhotoSpec], refers_to: Sequence[Requirement]) -> list[str]:
    """Ids of the photos in specs that contain every (color, shape, size-or-None) of refers_to."""
    return sorted(_matching_ids(_album_index(specs), [tuple(r) for r in refers_to]))
