"""app.query: the things a question says its photo shows."""

from __future__ import annotations

import pytest

from app.query import MAX_PARTS, referring_parts
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
