"""Reading a chat message: what kind of request it is, and the things it says its photo shows.

`parse_message(text, has_previous)` sorts a message into one of four kinds:
- "photo": a question that names its photo by what it shows ("... in the photo with the red circle?");
- "search": a request for photos ("Show me photos of a red circle", "Are there pictures with a dog?");
- "followup": a question about the photo of the previous turn, when there is one: it points back at it
  ("When was it taken?", "What about the one on the right?", "Is that photo from 2019?"), or asks what a
  photo can answer (its colors, objects, positions, date: "What color is the background?") without naming
  anything else (a name or a number: "How many people live in Paris?", "When did World War 2 end?");
- "other": anything else, with no photo to answer from (general knowledge, chit-chat).
`followup_question(text, parts)` rewrites a follow-up in a form the model was trained on, naming the
previous photo ("When was it taken?" -> "In what year was the photo with the red circle taken?").

The things a question says its photo shows:

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
from dataclasses import dataclass
from typing import Sequence

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

# "Show me photos of X", "find pictures with X", "are there any images showing X", "do I have photos of X"
_SEARCH = re.compile(
    r"^\s*(?:please\s+|can you\s+|could you\s+)*(?:show(?: me)?|find(?: me)?|search(?: for)?|look for|list|get me|"
    r"give me|are there(?: any)?|is there(?: any| a)?|do i have(?: any)?|have i got(?: any)?)\s+"
    r"(?:all\s+|any\s+|the\s+|some\s+|my\s+)?(?:photos?|pictures?|images?|pics?|shots?|snapshots?)\s+"
    r"(?:of|with|showing|containing|that (?:show|have|contain)s?|where (?:there (?:is|are)\s+)?)\s*(?P<target>.+?)\s*[?.!]*$",
    re.IGNORECASE,
)
# Words that point back at the photo of the previous turn.
_REFERENCE = re.compile(
    r"\b(?:it|its|it's|that photo|this photo|that picture|this picture|that image|this image|that one|this one|"
    r"the same(?: one| photo| picture)?|the photo|the picture|the image)\b|^\s*(?:and|what about|how about)\b",
    re.IGNORECASE,
)


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


def search_target(text: str) -> list[str]:
    """The things a "show me photos of X and Y" request asks for, or [] when it is not one."""
    match = _SEARCH.match(text or "")
    if not match:
        return []
    return referring_parts(f"the photo with {match.group('target')}")


@dataclass(frozen=True)
class Parsed:
    """A chat message read for what it asks (see module doc). ``parts``: the things it names."""

    kind: str
    parts: tuple[str, ...] = ()


def parse_message(text: str, has_previous: bool = False) -> Parsed:
    """Sort a message into photo / search / followup / other (see module doc)."""
    target = search_target(text)
    if target:
        return Parsed("search", tuple(target))
    parts = referring_parts(text)
    if parts:
        return Parsed("photo", tuple(parts))
    if has_previous and is_followup(text):
        return Parsed("followup")
    return Parsed("other")


# Question words that ask something a photo can answer (its content, when it was taken).
_ABOUT_A_PHOTO = re.compile(
    r"\b(?:color|colour|background|how many|objects?|shapes?|left|right|middle|centre|center|taken|year|when|"
    r"date|size|big|small|large|describe|show|shows|is there|are there)\b",
    re.IGNORECASE,
)
# A name or a number after the first word ("Paris", "World War 2"): the question is about something else.
_NAMES_OTHER = re.compile(r"(?<=\s)[A-Z][a-z]|\d")
# Words a follow-up uses that its rewrite (followup_question) replaces: never "unknown" to a model.
FOLLOWUP_WORDS = frozenset("about same taken year date old else other then also".split())


def is_followup(text: str) -> bool:
    """Does the message ask about the photo of the previous turn? (see module doc)"""
    text = text or ""
    return bool(_REFERENCE.search(text) or (_ABOUT_A_PHOTO.search(text) and not _NAMES_OTHER.search(text)))


def the_parts(parts: Sequence[str]) -> str:
    """"the red circle and the small blue star": parts as a question names them."""
    from data.world import join_phrases

    return join_phrases([_INDEFINITE.sub("the ", p) for p in parts])


# (pattern, album question form (data.world.ALBUM_FORMS), position): a follow-up that matches a pattern is
# asked as that album question about the previous photo.
_WHEN = re.compile(r"\b(?:when|what year|which year|what date|how old)\b", re.IGNORECASE)
_FOLLOWUP_FORMS = (
    (_WHEN, "year", None),
    (re.compile(r"\bbackground\b", re.IGNORECASE), "background", None),
    (re.compile(r"\bhow many\b", re.IGNORECASE), "count_objects", None),
    (re.compile(r"\b(?:on the )?left\b", re.IGNORECASE), "position", "left"),
    (re.compile(r"\b(?:on the )?right\b", re.IGNORECASE), "position", "right"),
    (re.compile(r"\b(?:in the )?(?:middle|centre|center)\b", re.IGNORECASE), "position", "middle"),
)
# "What shape is on the left?" asks for an attribute, not "what is there": not a position question.
_ATTRIBUTE = re.compile(r"\b(?:shape|colou?r|size)\b", re.IGNORECASE)


def followup_question(text: str, parts: Sequence[str]) -> str | None:
    """A follow-up rewritten in a form the grounded answers were trained on, naming the previous photo by
    ``parts`` (its referring parts): "When was it taken?" -> "In what year was the photo with the red
    circle taken?". Without parts only a question about the date is rewritten ("In what year was the
    photo taken?"). None when no form fits (then the question is asked about that photo as it is)."""
    from data.world import album_question

    the = f"the photo with {the_parts(parts)}" if parts else "the photo"
    for pattern, form, position in _FOLLOWUP_FORMS:
        if not pattern.search(text):
            continue
        if not parts and form != "year":
            return None
        if position and _ATTRIBUTE.search(text):
            return None
        return album_question(form, the, position or "left")
    return None


def asks_when(text: str) -> bool:
    """Does the question ask when its photo was taken? (the answer is in the index, not in the pixels)"""
    return bool(_WHEN.search(text or ""))
