"""The sample-world recipe (training.sampleworld): contrastive texts with their tags, and grounded turns."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from cafe_core import prompts
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
        assert re.fullmatch(r"\S+( \S+)* \[1\]", reply), reply


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



def test_balanced_yes_no_turns_answer_yes_and_no_about_equally(train_data):
    """p_yes_no: QA turns become yes/no questions about the photo, half "yes" (the data alone is 2/3 "no")."""
    photos = _photos(train_data)
    augment = SampleWorldAugment(train_data, seed=2, max_qa_turns=4, caption_turn_prob=0.0, p_yes_no=1.0)
    answers = []
    for epoch in range(3):
        for pid, gt in photos.items():
            turns = augment(SimpleNamespace(id=pid, image=object()), epoch).conversation
            asked = {(q["question"], q["answer"]) for q in gt["qa"] if q["qtype"] == "exists"}
            asked |= {(p["question"], p["answer"]) for p in gt.get("pope", [])}
            for user, reply in zip(turns[::2], turns[1::2]):
                assert (user.content, reply.content) in asked  # a real probe of this photo, with its answer
                answers.append(reply.content)
    assert len(answers) == 3 * 4 * len(photos)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6
