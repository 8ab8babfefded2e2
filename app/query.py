"""Query decomposition: the things a question says its photo shows.

"What color is the background in the photo with the large green circle and the small red square?"
names its photo by two things; one pooled embedding of the whole question blurs them together (and
with the words that ask about the background). `referring_parts` pulls them out, so retrieval can
ask for a photo that shows *each* of them (app.search.search_all_of):

    >>> referring_parts("What is on the left in the photo with the red car, the dog and a blue ball?")
    ['a red car', 'a dog', 'a blue ball']
    >>> referring_parts("How many people are in the picture of my sister's wedding?")
    ["my sister's wedding"]
    >>> referring_parts("What breed is the dog on the beach?")
    []

It reads one common English pattern, "photo / picture / image / shot with|of|showing|containing X, Y
and Z"; any other question gives [] and is retrieved by its own embedding, as before.
"""

from __future__ import annotations

import re

# "the photo with ...", "a picture showing ...", "the images of ...", "the one with ..."
_CLAUSE = re.compile(
    r"\b(?:photo|photograph|picture|pic|image|shot|snapshot|one)s?\s+"
    r"(?:with|of|showing|containing|that (?:shows?|has|have|contains?)|where (?:there (?:is|are)\s+)?)\s+"
    r"(?P<parts>.+)",
    re.IGNORECASE,
)
# Where the description ends: sentence punctuation, or a clause about when or where it was taken.
_END = re.compile(r"[?.!;]|\s+(?:taken|shot|from|in \d{4}|on \w+day)\b", re.IGNORECASE)
_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+|\s+with\s+", re.IGNORECASE)
_THE = re.compile(r"^the\s+", re.IGNORECASE)
_INDEFINITE = re.compile(r"^(?:a|an)\s+", re.IGNORECASE)
# A plural or counted part keeps its own wording ("two dogs"): only singular "the X" becomes "a X".
_KEEP = re.compile(r"^(?:my|our|his|her|their|your|some|two|three|four|five|\d+)\b", re.IGNORECASE)
MAX_PARTS = 6


def referring_parts(question: str) -> list[str]:
    """The things the question's photo is said to show ("a red car", "a dog"), or [] if it names none."""
    match = _CLAUSE.search(question or "")
    if not match:
        return []
    text = _END.split(match.group("parts"), maxsplit=1)[0]
    parts = []
    for raw in _SPLIT.split(text):
        words = raw.strip().split()
        if not words:
            continue
        phrase = _THE.sub("", " ".join(words))
        if not (_KEEP.match(phrase) or _INDEFINITE.match(phrase)):
            phrase = ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase
        if phrase.lower() not in (p.lower() for p in parts):
            parts.append(phrase)
    return parts[:MAX_PARTS]
