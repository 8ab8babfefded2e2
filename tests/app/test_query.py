"""app.query: the things a question says its photo shows."""

from __future__ import annotations

import pytest

from app.query import MAX_PARTS, followup_question, parse_message, referring_parts, search_target
from cafe_core import prompts


@pytest.mark.parametrize("question, parts", [
    ("What color is the background in the photo with the large green circle and the small red square?",
     ["a large green circle", "a small red square"]),
    ("In what year was the photo with the purple star, the small orange triangle and the large blue circle taken?",
     ["a purple star", "a small orange triangle", "a large blue circle"]),
    ("How many objects are in the photo with the red circle?", ["a red circle"]),
    ("What is in the picture of an apple and the old oak tree?", ["an apple", "an old oak tree"]),
    ("Who is in the image showing my sister's wedding?", ["my sister's wedding"]),
    ("Where was the shot with two dogs and a ball from 2019?", ["two dogs", "a ball"]),
    ("find the photos that show the red car and the red car", ["a red car"]),
    ("What breed is the dog on the beach?", []),
    ("Describe the photo.", []),
    ("", []),
])
def test_referring_parts(question, parts):
    assert referring_parts(question) == parts


def test_parts_are_capped_and_described_as_one_caption():
    many = "the photo with " + ", ".join(f"the thing {n}" for n in range(10))
    assert len(referring_parts(many)) == MAX_PARTS
    assert prompts.describe_parts(["a red car"]) == "a photo of a red car"
    assert prompts.describe_parts(["a", "b", "c"]) == "a photo of a, b and c"
    with pytest.raises(ValueError):
        prompts.describe_parts([])


@pytest.mark.parametrize("message, has_previous, kind", [
    # names its photo: a new retrieval, conversation or not
    ("What color is the background in the photo with the red circle?", True, "photo"),
    ("What color is the background in the photo with the red circle?", False, "photo"),
    # a request for photos
    ("Show me photos of a red circle", False, "search"),
    ("are there any pictures with a blue star?", True, "search"),
    # points back at the previous photo, or asks what a photo can answer, naming nothing else
    ("When was it taken?", True, "followup"),
    ("What about the one on the right?", True, "followup"),
    ("How many objects are in it?", True, "followup"),
    ("What color is the background?", True, "followup"),
    ("Is that photo from the same year?", True, "followup"),
    # ... but not without a previous photo
    ("When was it taken?", False, "other"),
    ("What color is the background?", False, "other"),
    # names something else (a name, a number): not about the photo, conversation or not
    ("When did World War 2 end?", True, "other"),
    ("How many people live in Paris?", True, "other"),
    ("What is 17 times 23?", True, "other"),
    ("What is the capital of France?", True, "other"),
    ("Thanks, that's all!", True, "other"),
    ("Tell me a joke.", True, "other"),
])
def test_parse_message(message, has_previous, kind):
    assert parse_message(message, has_previous).kind == kind


def test_parse_message_keeps_the_named_things():
    assert parse_message("How many objects are in the photo with the small red circle and a star?").parts == (
        "a small red circle", "a star")
    assert parse_message("Show me photos of an orange square").parts == ("an orange square",)
    assert search_target("What is on the left?") == []


PARTS = ("a red circle", "a small blue star")
THE = "the photo with the red circle and the small blue star"


@pytest.mark.parametrize("followup, parts, rewritten", [
    ("When was it taken?", PARTS, f"In what year was {THE} taken?"),
    ("what year is that photo from", PARTS, f"In what year was {THE} taken?"),
    ("And the background?", PARTS, f"What color is the background in {THE}?"),
    ("How many objects are in it?", PARTS, f"How many objects are in {THE}?"),
    ("What about the one on the right?", PARTS, f"What is on the right in {THE}?"),
    ("what's in the middle?", PARTS, f"What is in the middle in {THE}?"),
    ("What shape is on the left?", PARTS, None),  # an attribute at a place: asked as it is
    ("Is it blurry?", PARTS, None),  # no trained form
    # without the previous photo's parts, only the date question is rewritten (the date is in the index)
    ("When was this taken?", (), "In what year was the photo taken?"),
    ("What color is the background?", (), None),
])
def test_followup_question(followup, parts, rewritten):
    assert followup_question(followup, parts) == rewritten
