"""The sample-world recipe (training.sampleworld): contrastive texts with their tags, hard negatives, and
grounded turns over one or several photos that cite the photo the question names."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from PIL import Image

from cafe_core import prompts
from data.queries import TAGS, image_tags, matches
from data.synth import read_album
from training.sampleworld import Recipe, SampleWorldAugment

_REF = re.compile(r"in the photo with (.+)\?$|was the photo with (.+) taken\?$")
_ITEM = re.compile(r"the (?:(small|large) )?(\w+) (\w+)")
_PHOTO_LINE = re.compile(r"Photo \[(\d+)\], taken (\d{4}-\d\d-\d\d): <image>")


def _sample(pid: str):
    return SimpleNamespace(id=pid, image=Image.new("RGB", (8, 8)))


def _fits(spec, question: str) -> bool:
    """Does the photo have every object (with its size, when named) the question describes?"""
    m = _REF.search(question)
    assert m, question
    reqs = _ITEM.findall(m.group(1) or m.group(2))
    assert reqs, question
    have = {(o.size, o.color, o.shape) for o in spec.objects}
    return all(any((size or z, c, s) == (z, c2, s2) for z, c2, s2 in have) for size, c, s in reqs)


def _grounded(sample) -> tuple[str, str, list[str]] | None:
    """(question, reply, dates of the photos shown) of a sample's grounded turn, or None."""
    first = sample.conversation[0]
    if first.role != "user" or not first.content.startswith("Photo [1], taken "):
        return None
    question = first.content.split(prompts.GROUNDED_QUESTION.format(question=""))[1]
    dates = [d for _, d in _PHOTO_LINE.findall(first.content)]
    return question, sample.conversation[1].content, dates


def _tags(vector) -> set[str]:
    return {TAGS[i] for i, v in enumerate(vector) if v}


def test_grounded_turns_cite_a_photo_that_fits(train_data):
    album = read_album(train_data)
    augment = SampleWorldAugment(train_data, seed=0, recipe=Recipe(p_grounded=1.0))
    for epoch in range(2):
        for photo in album.photos:
            question, reply, dates = _grounded(augment(_sample(photo.spec.id), epoch))
            assert dates == [photo.spec.date.isoformat()[:10]]
            assert _fits(photo.spec, question), (photo.spec.objects, question)
            assert re.fullmatch(r"\S+( \S+)* \[1\]", reply), reply


def test_multi_photo_turns_show_distractors_and_cite_the_named_photo(train_data):
    album = read_album(train_data)
    by_date: dict[str, list] = {}
    for p in album.photos:
        by_date.setdefault(p.spec.date.isoformat()[:10], []).append(p)
    augment = SampleWorldAugment(train_data, seed=4, recipe=Recipe(p_grounded=1.0, p_multi_photo=1.0, image_max_side=64))
    cited_at, shown = [], []
    for epoch in range(3):
        for photo in album.photos:
            s = augment(_sample(photo.spec.id), epoch)
            question, reply, dates = _grounded(s)
            n = int(re.search(r"\[(\d+)\]$", reply).group(1))
            assert len(s.images) == len(dates) >= 2 and s.embed_image == n - 1
            assert dates[n - 1] == photo.spec.date.isoformat()[:10]
            assert _fits(photo.spec, question)
            others = [p for i, d in enumerate(dates) if i != n - 1 for p in by_date[d]]
            assert others and not any(_fits(p.spec, question) for p in others if p is not photo)
            assert s.images[n - 1] is s.image  # this sample's photo; the others were decoded from the album
            cited_at.append(n)
            shown.append(len(dates))
    assert set(cited_at) == {1, 2, 3} and set(shown) == {2, 3}  # the right answer is not always [1]


def test_caption_tags_name_what_the_text_names(train_data):
    album = read_album(train_data)
    augment = SampleWorldAugment(train_data, seed=1, recipe=Recipe(p_full_caption=0.3, p_question_caption=0.2,
                                                                   p_pair=0.2, p_attribute=0.1))
    kinds = set()
    for photo in album.photos:
        s = augment(_sample(photo.spec.id), 0)
        text_tags, photo_tags = _tags(s.text_tags), _tags(s.image_tags)
        assert photo_tags == set(image_tags(photo.spec))
        assert text_tags and text_tags <= photo_tags  # the photo has everything its text names
        for tag in text_tags:
            kind, _, word = tag.partition(":")
            assert (word if word else tag) in s.caption, (tag, s.caption)
            kinds.add(kind if word else "object")
    assert {"object", "color", "shape", "bg"} <= kinds


def test_hard_negatives_change_one_attribute_and_miss_their_photo(train_data):
    album = read_album(train_data)
    augment = SampleWorldAugment(train_data, seed=2, recipe=Recipe(p_full_caption=0.0, p_pair=0.6, p_hard=1.0))
    seen = 0
    for epoch in range(2):
        for photo in album.photos:
            s = augment(_sample(photo.spec.id), epoch)
            if s.hard_caption is None:
                continue
            seen += 1
            hard = _tags(s.hard_tags)
            assert not matches(hard, image_tags(photo.spec)), (s.hard_caption, photo.spec.objects)
            a, b = s.caption.split(), s.hard_caption.split()
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) in (1, 2), (s.caption, s.hard_caption)
            assert "purple star" not in s.hard_caption  # a held-out pair never appears, even as a negative
    assert seen > len(album.photos)


def test_balanced_yes_no_turns_answer_yes_and_no_about_equally(train_data):
    """p_yes_no: QA turns become yes/no questions about the photo, half "yes" (the data alone is 2/3 "no")."""
    album = read_album(train_data)
    augment = SampleWorldAugment(train_data, seed=2, recipe=Recipe(max_qa_turns=4, caption_turn_prob=0.0, p_yes_no=1.0))
    answers = []
    for epoch in range(3):
        for photo in album.photos:
            turns = augment(_sample(photo.spec.id), epoch).conversation
            asked = {(q.question, q.answer) for q in photo.qa if q.qtype == "exists"}
            asked |= {(p.question, p.answer) for p in photo.pope}
            for user, reply in zip(turns[::2], turns[1::2]):
                assert (user.content, reply.content) in asked  # a real probe of this photo, with its answer
                answers.append(reply.content)
    assert len(answers) == 3 * 4 * len(album.photos)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_position_and_extra_turns_are_true_and_not_repeated(train_data):
    album = read_album(train_data)
    augment = SampleWorldAugment(train_data, seed=3, recipe=Recipe(max_qa_turns=3, caption_turn_prob=0.0,
                                                                   position_turns=2, extra_turns=3))
    for photo in album.photos:
        turns = augment(_sample(photo.spec.id), 0).conversation
        pairs = [(u.content, r.content) for u, r in zip(turns[::2], turns[1::2])]
        assert len(pairs) == 3 + 2 + 3
        asked_where = [q for q, _ in pairs if q in ("What is on the left?", "What is in the middle?", "What is on the right?")]
        assert len(asked_where) == len(set(asked_where)) >= 2  # position turns add questions not asked yet
        by_pos = {o.position: o for o in photo.spec.objects}
        for q, a in pairs:
            if q == "What is on the left?":
                o = by_pos.get("left")
                assert a == (f"a {o.size} {o.color} {o.shape}" if o else "nothing")
            m = re.fullmatch(r"What color is the object (on the left|in the middle|on the right)\?", q)
            if m:
                o = by_pos.get(m.group(1).split()[-1])
                assert a == (o.color if o else "nothing")


def test_recipe_rejects_impossible_settings():
    with pytest.raises(ValueError, match="at most 1"):
        Recipe(p_full_caption=0.6, p_pair=0.6).validate()
    with pytest.raises(ValueError, match="between 0 and 1"):
        Recipe(p_hard=1.5).validate()


def test_the_previous_recipe_draws_the_same_samples_as_before(tmp_path):
    """With the knobs added since at 0, a sample's contrastive text and conversation are exactly those the
    first recipe drew (commit 777d786; stages 0-5 of the demo recipe reproduce the previous model with them):
    the digest below was computed by that commit's SampleWorldAugment on the same album, 2 epochs."""
    import hashlib
    import json

    from data.dataset import open_dataset
    from data.synth import write_album

    write_album(tmp_path, n=24, seed=11, split="train")
    recipe = Recipe(max_qa_turns=4, caption_turn_prob=0.2, p_full_caption=0.3, p_question_caption=0.15,
                    p_grounded=0.5, p_yes_no=0.4)
    augment = SampleWorldAugment(tmp_path, seed=3, recipe=recipe)
    digest = hashlib.sha256()
    for sample in open_dataset(tmp_path):
        for epoch in (0, 1):
            a = augment(sample, epoch)
            record = [a.caption, [[t.role, t.content] for t in a.conversation]]
            digest.update(json.dumps(record, sort_keys=True).encode())
    assert digest.hexdigest() == "34ab9ad77881a6c583e171d383068d812fab5dff756c8eb9f62116fb1205d305"
