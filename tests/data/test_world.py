"""The sample world: determinism, world rules, annotations consistent with ground truth, splits,
EXIF orientation and 96-px legibility."""

from __future__ import annotations

import io
import random
import re
from collections import Counter
from datetime import datetime

import numpy as np
import pytest
from PIL import Image, ImageOps

from data import vocab
from data.world import (
    COLOR_RGB,
    EXIF_DATETIME_ORIGINAL,
    EXIF_IFD_POINTER,
    EXIF_ORIENTATION,
    PhotoSpec,
    WorldObject,
    album_questions,
    captions,
    encode_photo,
    layout,
    object_counts,
    object_phrase,
    photos_matching,
    pope_probes,
    questions,
    render_photo,
    sample_photo_specs,
)

NUM = {w: i for i, w in enumerate(vocab.NUMBER_WORDS)}


def test_vocabulary_is_exactly_the_issue_vocabulary():
    assert vocab.SHAPES == ("circle", "square", "triangle", "star")
    assert vocab.COLORS == ("red", "green", "blue", "yellow", "purple", "orange")
    assert vocab.SIZES == ("small", "large")
    assert vocab.BACKGROUNDS == ("white", "gray", "black")
    assert vocab.POSITIONS == ("left", "middle", "right")
    held = vocab.COMPOSITIONAL_PAIRS
    assert {s for _, s in held} == set(vocab.SHAPES)  # every shape is held out once
    assert {c for c, _ in vocab.SEEN_PAIRS} == set(vocab.COLORS)  # train still sees every color ...
    assert {s for _, s in vocab.SEEN_PAIRS} == set(vocab.SHAPES)  # ... and every shape


def test_specs_are_deterministic_by_seed_and_prefix_stable():
    a = sample_photo_specs(30, seed=11, split="train")
    b = sample_photo_specs(30, seed=11, split="train")
    assert a == b
    assert [encode_photo(s) for s in a[:5]] == [encode_photo(s) for s in b[:5]]  # byte-identical JPEGs
    assert sample_photo_specs(10, seed=11, split="train") == a[:10]
    c = sample_photo_specs(30, seed=12, split="train")
    assert sum(x.objects != y.objects for x, y in zip(a, c)) > 20
    d = sample_photo_specs(30, seed=11, split="val")
    assert sum(x.objects != y.objects for x, y in zip(a, d)) > 20
    assert len({s.id for s in a + c + d}) == 90


def test_specs_follow_the_world_rules():
    specs = sample_photo_specs(300, seed=1, split="train")
    years = Counter(s.date.year for s in specs)
    orientations = Counter(s.orientation for s in specs)
    ratios = Counter(round(s.width / s.height, 2) for s in specs)
    for s in specs:
        assert 1 <= len(s.objects) <= 3
        assert len({o.pair for o in s.objects}) == len(s.objects)
        assert len({o.position for o in s.objects}) == len(s.objects)
        assert s.background in vocab.BACKGROUNDS
        assert not (s.background == "white" and any(o.color == "yellow" for o in s.objects))
        for o in s.objects:
            assert (o.shape, o.color, o.size, o.position) in {
                (sh, c, z, p) for sh in vocab.SHAPES for c in vocab.COLORS for z in vocab.SIZES for p in vocab.POSITIONS
            }
        assert min(s.width, s.height) >= 256
    assert len(years) >= 5
    assert set(orientations) == {1, 3, 6, 8}
    assert 0.1 < sum(v for k, v in orientations.items() if k != 1) / len(specs) < 0.4
    assert {1.0, 1.33, 1.5} <= set(ratios)
    assert Counter(len(s.objects) for s in specs).keys() == {1, 2, 3}


def test_spec_dict_round_trip():
    for s in sample_photo_specs(10, seed=2, split="compositional"):
        assert PhotoSpec.from_dict(s.to_dict()) == s


def _recompute_answer(spec: PhotoSpec, question: str) -> str:
    """An independent reading of each question template against the objects."""
    objs = spec.objects
    if question == vocab.COUNT_OBJECTS_QUESTION:
        return vocab.NUMBER_WORDS[len(objs)]
    if question == vocab.BACKGROUND_QUESTION:
        return spec.background
    if question == vocab.DESCRIBE_QUESTION:
        return "<caption>"
    for pos, q in vocab.POSITION_QUESTIONS.items():
        if question == q:
            hit = [o for o in objs if o.position == pos]
            return f"a {hit[0].size} {hit[0].color} {hit[0].shape}" if hit else "nothing"
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        hit = [o for o in objs if o.shape == m[1]]
        assert len(hit) == 1, "asked about a shape that is not unique"
        return hit[0].color
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        hit = [o for o in objs if o.color == m[1]]
        assert len(hit) == 1, "asked about a color that is not unique"
        return hit[0].shape
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return vocab.NUMBER_WORDS[sum(o.shape == m[1] for o in objs)]
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the photo\?", question):
        return "yes" if any(o.color == m[1] and o.shape == m[2] for o in objs) else "no"
    raise AssertionError(f"unknown question form: {question!r}")


@pytest.mark.parametrize("split", ["train", "compositional"])
def test_every_qa_answer_matches_ground_truth(split):
    specs = sample_photo_specs(120, seed=3, split=split)
    qtypes = Counter()
    for s in specs:
        qa = questions(s)
        assert len({q.question for q in qa}) == len(qa), "duplicate question in one photo"
        for q in qa:
            assert q.qtype in vocab.QTYPES
            assert q.answer == q.answer.lower() and len(q.answer.split()) <= (60 if q.qtype == "describe" else 4)
            expected = _recompute_answer(s, q.question)
            if q.qtype == "describe":
                assert q.answer in captions(s)
            else:
                assert q.answer == expected, (s, q)
            qtypes[q.qtype] += 1
        exists = [q for q in qa if q.qtype == "exists"]
        assert Counter(q.answer for q in exists) == {"yes": len(s.objects), "no": len(s.objects)}
    assert set(qtypes) == set(vocab.QTYPES)


def test_captions_name_every_object_and_the_background():
    for s in sample_photo_specs(50, seed=4, split="train"):
        caps = captions(s)
        assert len(set(caps)) >= 4
        for c in caps:
            assert s.background in c
            for o in s.objects:
                assert object_phrase(o) in c
        assert caps[0].startswith(object_phrase(sorted(s.objects, key=lambda o: vocab.POSITIONS.index(o.position))[0]))


def test_caption_example_from_the_issue():
    s = PhotoSpec(
        id="x",
        objects=(WorldObject("circle", "red", "large", "left"), WorldObject("star", "blue", "small", "right")),
        background="gray",
        date=datetime(2020, 1, 1),
        width=256,
        height=256,
    )
    assert captions(s)[0] == "a large red circle on the left and a small blue star on the right, on a gray background"
    assert object_phrase(s.objects[1]) == "a small blue star"


def test_pope_negatives_are_absent_and_kinds_follow_their_rules():
    specs = sample_photo_specs(150, seed=5, split="train")
    counts = object_counts(specs)
    kinds = Counter()
    for s in specs:
        present = {o.pair for o in s.objects}
        probes = pope_probes(s, random.Random(s.id), counts)
        absent_ranked = sorted((p for p in vocab.SEEN_PAIRS if p not in present), key=lambda p: -counts[p])
        for p in probes:
            kinds[p.kind] += 1
            assert p.question == f"Is there a {p.color} {p.shape} in the photo?"
            if p.kind == "positive":
                assert p.answer == "yes" and (p.color, p.shape) in present
                continue
            assert p.answer == "no" and (p.color, p.shape) not in present, (s, p)
            assert (p.color, p.shape) not in vocab.COMPOSITIONAL_PAIRS  # held-out pairs stay unseen in train
            if p.kind == "adversarial":
                assert p.color in {o.color for o in s.objects} or p.shape in {o.shape for o in s.objects}
            if p.kind == "popular":
                # No absent pair more frequent than the least frequent popular pick was left out.
                assert counts[(p.color, p.shape)] >= counts[absent_ranked[len(s.objects) - 1]]
        for kind in ("positive", "random", "popular", "adversarial"):
            assert sum(p.kind == kind for p in probes) == len(s.objects)
    assert set(kinds) == set(vocab.PROBE_KINDS)


def test_compositional_split_shares_no_pair_with_train():
    train = sample_photo_specs(400, seed=6, split="train")
    comp = sample_photo_specs(100, seed=6, split="compositional")
    train_pairs = {o.pair for s in train for o in s.objects}
    comp_pairs = {o.pair for s in comp for o in s.objects}
    assert comp_pairs == set(vocab.COMPOSITIONAL_PAIRS)
    assert not train_pairs & comp_pairs
    assert {c for c, _ in train_pairs} == set(vocab.COLORS) and {s for _, s in train_pairs} == set(vocab.SHAPES)
    # Not even the text of train questions names a held-out pair.
    held_phrases = [f"{c} {s}" for c, s in vocab.COMPOSITIONAL_PAIRS]
    for s in train[:100]:
        for q in questions(s):
            assert not any(h in q.question or h in q.answer for h in held_phrases), q


def _close(a, b, tol=40) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def test_exif_rotated_photos_come_out_upright():
    specs = [s for s in sample_photo_specs(80, seed=7, split="train") if s.orientation != 1]
    assert {s.orientation for s in specs} == {3, 6, 8}
    for s in specs:
        raw = Image.open(io.BytesIO(encode_photo(s)))
        exif = raw.getexif()
        assert exif[EXIF_ORIENTATION] == s.orientation
        assert exif.get_ifd(EXIF_IFD_POINTER)[EXIF_DATETIME_ORIGINAL] == s.date.strftime("%Y:%m:%d %H:%M:%S")
        stored_size = (s.height, s.width) if s.orientation in (6, 8) else (s.width, s.height)
        assert raw.size == stored_size
        raw_rgb = raw.convert("RGB")
        upright = ImageOps.exif_transpose(raw).convert("RGB")
        assert upright.size == (s.width, s.height)
        w, h = s.width, s.height
        # Where upright (x, y) lies in the stored pixels, derived by hand for each EXIF orientation.
        to_stored = {
            3: lambda x, y: (w - 1 - x, h - 1 - y),
            6: lambda x, y: (y, w - 1 - x),  # stored = upright turned 90 deg counter-clockwise
            8: lambda x, y: (h - 1 - y, x),  # stored = upright turned 90 deg clockwise
        }[s.orientation]
        for obj, lay in zip(s.objects, layout(s)):
            xy = (int(lay.cx), int(lay.cy))
            assert _close(upright.getpixel(xy), COLOR_RGB[obj.color]), (s.id, obj, upright.getpixel(xy))
            assert _close(raw_rgb.getpixel(to_stored(*xy)), COLOR_RGB[obj.color]), (s.id, obj)


def test_upright_photos_carry_orientation_1_and_date():
    s = next(s for s in sample_photo_specs(20, seed=8, split="val") if s.orientation == 1)
    raw = Image.open(io.BytesIO(encode_photo(s)))
    assert raw.format == "JPEG" and raw.size == (s.width, s.height)
    assert raw.getexif()[EXIF_ORIENTATION] == 1


def test_palette_colors_are_far_apart():
    names = list(COLOR_RGB)
    assert set(names) == set(vocab.COLORS)
    dist = {
        (a, b): float(np.linalg.norm(np.subtract(COLOR_RGB[a], COLOR_RGB[b])))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    assert min(dist.values()) >= 85, min(dist.items(), key=lambda kv: kv[1])


def test_object_colors_survive_downscaling_to_96px():
    """The tiny model sees 96x96: every object's color must still be its nearest palette color there."""
    names = list(COLOR_RGB)
    palette = np.array([COLOR_RGB[c] for c in names], dtype=np.float32)
    checked = 0
    for s in sample_photo_specs(60, seed=9, split="train"):
        jpeg = Image.open(io.BytesIO(encode_photo(s)))
        small = np.asarray(ImageOps.exif_transpose(jpeg).convert("RGB").resize((96, 96), Image.BICUBIC), dtype=np.float32)
        for obj, lay in zip(s.objects, layout(s)):
            x, y = lay.cx * 96 / s.width, lay.cy * 96 / s.height
            patch = small[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].reshape(-1, 3).mean(0)
            nearest = names[int(np.argmin(((palette - patch) ** 2).sum(1)))]
            assert nearest == obj.color, (s.id, obj, patch)
            checked += 1
    assert checked > 100


def test_object_sizes_relative_to_their_cell():
    for s in sample_photo_specs(60, seed=10, split="train"):
        cell = min(s.width / 3, s.height)
        for obj, lay in zip(s.objects, layout(s)):
            frac = lay.extent / cell
            assert (0.7 <= frac <= 0.9) if obj.size == "large" else (0.35 <= frac <= 0.55)
            third = vocab.POSITIONS.index(obj.position)
            assert third * s.width / 3 < lay.cx < (third + 1) * s.width / 3


def test_render_is_upright_rgb_of_spec_size():
    s = sample_photo_specs(1, seed=0, split="test")[0]
    img = render_photo(s)
    assert img.mode == "RGB" and img.size == (s.width, s.height)


def test_album_questions_name_exactly_one_photo_and_answer_it():
    specs = sample_photo_specs(60, seed=12, split="train")
    by_id = {s.id: s for s in specs}
    qs = album_questions(specs, random.Random(0))
    assert len(qs) >= 20
    assert len({q.qtype for q in qs}) == 4
    for q in qs:
        assert len(q.photo_ids) == 1
        assert photos_matching(specs, q.refers_to) == list(q.photo_ids)
        s = by_id[q.photo_ids[0]]
        assert "the photo with the " in q.question
        if q.qtype == "album_background":
            assert q.answer == s.background
        elif q.qtype == "album_count_objects":
            assert q.answer == vocab.NUMBER_WORDS[len(s.objects)]
        elif q.qtype == "album_year":
            assert q.answer == str(s.date.year)
        else:
            pos = re.search(r"What is (?:on the|in the) (\w+) in", q.question)[1]
            hit = [o for o in s.objects if o.position == pos]
            assert q.answer == (object_phrase(hit[0]) if hit else "nothing")
    assert album_questions(specs, random.Random(0)) == qs  # deterministic by rng


def test_issue_example_album_question():
    specs = [
        PhotoSpec("a", (WorldObject("star", "purple", "small", "left"),), "black", datetime(2019, 5, 1), 256, 256, split="compositional"),
        PhotoSpec("b", (WorldObject("circle", "blue", "large", "middle"),), "white", datetime(2021, 5, 1), 256, 256, split="compositional"),
    ]
    qs = album_questions(specs, random.Random(1))
    assert len(qs) == 2
    bg = [q for q in qs if q.photo_ids == ("a",)][0]
    assert "the photo with the purple star" in bg.question


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        sample_photo_specs(3, seed=0, split="training")
    with pytest.raises(ValueError, match="n must be"):
        sample_photo_specs(-1, seed=0)


# ------------------------------------------------------------------------------------------- varied style
def _nearest_palette(pixels: np.ndarray) -> list[str]:
    names = list(COLOR_RGB)
    palette = np.array([COLOR_RGB[c] for c in names], dtype=np.float32)
    # Hue survives the varied style's brightness and lighting: compare unit-length colour directions.
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-6)  # noqa: E731
    return [names[i] for i in np.argmax(unit(pixels.astype(np.float32)) @ unit(palette).T, axis=1)]


def test_varied_photos_hold_their_objects_where_the_ground_truth_says():
    """Ground truth is exact in the varied style: inside each object's box, the pixels nearest in hue to
    the object's color are many (its own body), whatever the lighting, blur, noise and overlaps."""
    checked = 0
    for s in sample_photo_specs(60, seed=21, split="train", style="varied"):
        img = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(encode_photo(s)))).convert("RGB"))
        assert img.shape[:2] == (s.height, s.width)
        for obj, lay in zip(s.objects, layout(s)):
            left, top, right, bottom = lay.box
            patch = img[max(0, top):bottom, max(0, left):right].reshape(-1, 3)
            background = np.abs(patch.astype(int) - patch.astype(int).mean(1, keepdims=True)).max(1) < 25  # grayish
            colored = patch[~background]
            share = np.mean([c == obj.color for c in _nearest_palette(colored)]) if len(colored) else 0.0
            assert len(colored) >= 0.15 * len(patch) and share >= 0.5, (s.id, obj, len(colored) / len(patch), share)
            checked += 1
    assert checked > 100


def test_varied_style_varies_what_plain_keeps_fixed():
    plain = sample_photo_specs(80, seed=3, split="test")
    varied = sample_photo_specs(80, seed=3, split="test", style="varied")
    assert all(s.style == "plain" for s in plain) and all(s.style == "varied" for s in varied)
    assert len({(s.width, s.height) for s in varied}) > 3 * len({(s.width, s.height) for s in plain})
    assert any(s.height > s.width for s in varied)  # portrait photos too
    fracs = [lay.extent / min(s.width / 3 * 1.12, s.height) for s in varied for lay in layout(s)]
    assert min(fracs) < 0.35 and max(fracs) > 0.9  # sizes spread beyond the plain ranges
    for s in varied:  # the position word still holds: each centre in its third, inside the photo
        for obj, lay in zip(s.objects, layout(s)):
            third = vocab.POSITIONS.index(obj.position)
            assert third * s.width / 3 <= lay.cx <= (third + 1) * s.width / 3
            assert lay.extent / 2 - 1e-6 <= lay.cx <= s.width - lay.extent / 2 + 1e-6
    mixed = sample_photo_specs(80, seed=3, split="test", style="mixed")
    assert 20 < sum(s.style == "varied" for s in mixed) < 60
    # Plain photos are unchanged by the varied style's existence: same ids, same bytes for the same spec.
    assert [s.id for s in plain][:3] == ["test-3-00000", "test-3-00001", "test-3-00002"]
    assert varied[0].id == "test-varied-3-00000"
