"""The sample-world recipe (training.sampleworld): contrastive texts with their tags, and grounded turns,
including the mismatched ones that teach the model to turn down a photo that does not fit."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from cafe_core import prompts
from data.vocab import COMPOSITIONAL_PAIRS
from training.sampleworld import TAGS, SampleWorldAugment

_REF = re.compile(r"in the photo with (.+)\?$|was the photo with (.+) taken\?$")
_ITEM = re.compile(r"the (?:(small|large) )?(\w+) (\w+)")


def _photos(train_data) -> dict:
    return {p["id"]: p for p in json.loads((train_data / "ground_truth.json").read_text())["photos"]}


def _grounded_turns(augment, photos, epochs=range(6)):
    """(photo, question, reply) of every grounded turn the recipe writes over a few epochs."""
    out = []
    for epoch in epochs:
        for pid, gt in photos.items():
            s = augment(SimpleNamespace(id=pid, image=object()), epoch)
            first = s.conversation[0]
            if first.role == "user" and first.content.startswith("Photo [1], taken "):
                question = first.content.split(prompts.GROUNDED_QUESTION.format(question=""))[1]
                out.append((gt, question, s.conversation[1].content))
    return out


def _fits(gt: dict, question: str) -> bool:
    """Does the photo have every object (with its size, when named) the question describes?"""
    m = _REF.search(question)
    assert m, question
    reqs = _ITEM.findall(m.group(1) or m.group(2))
    assert reqs, question
    have = {(o["size"], o["color"], o["shape"]) for o in gt["objects"]}
    return all(any((size or z, c, s) == (z, c2, s2) for z, c2, s2 in have) for size, c, s in reqs)


def test_grounded_turns_cite_a_photo_that_fits(train_data):
    augment = SampleWorldAugment(train_data, seed=0, p_grounded=1.0)
    turns = _grounded_turns(augment, _photos(train_data), epochs=range(2))
    assert len(turns) == 2 * len(_photos(train_data))
    for gt, question, reply in turns:
        assert _fits(gt, question), (gt["objects"], question)
        assert reply.endswith(" [1]") and reply != prompts.NO_MATCHING_PHOTO


def test_mismatched_grounded_turns_describe_a_near_miss_and_reply_no_matching_photo(train_data):
    photos = _photos(train_data)
    augment = SampleWorldAugment(train_data, seed=0, p_grounded=1.0, p_grounded_mismatch=0.5)
    turns = _grounded_turns(augment, photos)
    rejected = [(gt, q) for gt, q, reply in turns if reply == prompts.NO_MATCHING_PHOTO]
    cited = [(gt, q) for gt, q, reply in turns if reply.endswith(" [1]")]
    assert len(rejected) + len(cited) == len(turns)
    assert 0.35 < len(rejected) / len(turns) < 0.6  # about half, minus photos with no near miss to name
    assert all(not _fits(gt, q) for gt, q in rejected)  # the photo really does not fit the description
    assert all(_fits(gt, q) for gt, q in cited)
    # Near misses: most named objects are really in the photo, one attribute is off.
    for gt, q in rejected:
        named = _ITEM.findall(_REF.search(q).group(1) or _REF.search(q).group(2))
        missing = [(c, s) for _, c, s in named if (c, s) not in {(o["color"], o["shape"]) for o in gt["objects"]}]
        assert len(missing) <= 1
        assert not any(pair in COMPOSITIONAL_PAIRS for pair in ((c, s) for _, c, s in named))


def test_mismatch_is_off_by_default_and_leaves_the_recipe_unchanged(train_data):
    """p_grounded_mismatch=0 draws no extra random numbers: existing configs train on the same samples."""
    photos = _photos(train_data)
    a = SampleWorldAugment(train_data, seed=3, p_grounded=0.5, p_yes_no=0.4)
    b = SampleWorldAugment(train_data, seed=3, p_grounded=0.5, p_yes_no=0.4, p_grounded_mismatch=0.0)
    for pid in list(photos)[:20]:
        sa, sb = a(SimpleNamespace(id=pid, image=object()), 1), b(SimpleNamespace(id=pid, image=object()), 1)
        assert (sa.conversation, sa.caption) == (sb.conversation, sb.caption)
        assert prompts.NO_MATCHING_PHOTO not in [t.content for t in sa.conversation]


def test_caption_tags_name_what_the_text_names(train_data):
    photos = _photos(train_data)
    augment = SampleWorldAugment(train_data, seed=1, p_full=0.3, p_question=0.2)
    for pid, gt in list(photos.items())[:30]:
        s = augment(SimpleNamespace(id=pid, image=object()), 0)
        text_tags = {TAGS[i] for i, v in enumerate(s.text_tags) if v}
        image_tags = {TAGS[i] for i, v in enumerate(s.image_tags) if v}
        assert text_tags and text_tags <= image_tags  # the photo has everything its text names
        for tag in text_tags - {t for t in text_tags if t.startswith("bg:")}:
            assert tag in s.caption, (tag, s.caption)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_config_rejects_a_bad_mismatch_probability(p):
    from training.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="p_grounded_mismatch"):
        TrainConfig(data="x", p_grounded_mismatch=p).validate()
