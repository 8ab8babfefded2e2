"""What a model was trained on, in words: ``training_vocab.json`` in the model folder.

The trainer counts the words of every text a model trained on (conversations, contrastive texts, hard
negatives), adds the counts of its base model's file when there is one, and writes them next to the
weights. The app reads them to tell a person when a query uses words the model never saw ("this model
has never seen 'cat'"). A model folder without the file (any hub checkpoint) is treated as
open-vocabulary: every word is assumed known.

    counts = WordCounts(); counts.update(["a red circle", "What is on the left?"])
    counts.save(folder)                     # folder/training_vocab.json
    vocab = TrainingVocab.load(folder)      # None when the folder has no such file
    vocab.unknown("a cat on a red circle")  # ['cat']
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import prompts

log = logging.getLogger(__name__)

VOCAB_FILE = "training_vocab.json"
VOCAB_VERSION = 1
_WORD = re.compile(r"[a-z]+")
# Words that carry no content: never reported as unseen (a query may use them whatever the model knows).
STOP_WORDS = frozenset(
    "a an the of in on at to with and or but is are was were be been it its this that these those there "
    "what which who whom where when why how do does did any some all my our your their his her me i we you "
    "show find photo photos picture pictures image images pic pics one ones".split()
)


def words(text: str) -> list[str]:
    """The lower-case words of a text (letters only; image placeholders dropped): the unit counted."""
    return _WORD.findall(text.replace(prompts.IMAGE_PLACEHOLDER, " ").lower())


class WordCounts:
    """Word counts of the texts a model trained on (mergeable across stages and processes)."""

    def __init__(self, counts: dict | None = None, texts: int = 0):
        self.counts: Counter = Counter(counts or {})
        self.texts = int(texts)

    def update(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.counts.update(words(text))
            self.texts += 1

    def merge(self, other: "WordCounts") -> "WordCounts":
        return WordCounts(self.counts + other.counts, self.texts + other.texts)

    def to_json(self) -> dict:
        return {"version": VOCAB_VERSION, "texts": self.texts,
                "words": dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))}

    @classmethod
    def from_json(cls, data: dict) -> "WordCounts":
        return cls(data.get("words", {}), data.get("texts", 0))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "WordCounts | None":
        """The counts in a model folder, or None when it has no vocabulary file."""
        path = Path(folder) / VOCAB_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("words", {}), dict):
                raise ValueError("not a {\"words\": {word: count}} object")
            return cls.from_json(data)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a training vocabulary file: {e}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write folder/training_vocab.json (atomically)."""
        path = Path(folder) / VOCAB_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


@dataclass(frozen=True)
class TrainingVocab:
    """The words a model was trained on (see module doc)."""

    words: frozenset[str]
    counts: dict

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TrainingVocab | None":
        """The words of the model in ``folder``; None (open-vocabulary) without a file, or with a broken one
        (logged)."""
        try:
            counts = WordCounts.load(folder) if folder and Path(folder).is_dir() else None
        except ValueError as e:
            log.warning("%s; treating the model as open-vocabulary", e)
            return None
        if counts is None:
            return None
        return cls(frozenset(counts.counts), dict(counts.counts))

    def unknown(self, text: str) -> list[str]:
        """Content words of ``text`` the model never saw in training, in order, each once."""
        out: list[str] = []
        for w in words(text):
            if not self.knows(w) and w not in STOP_WORDS and w not in out:
                out.append(w)
        return out

    def knows(self, word: str) -> bool:
        """The word, or its singular ("circles" -> "circle", "boxes" -> "box"), was trained on."""
        w = word.lower()
        return w in self.words or (w.endswith("s") and w[:-1] in self.words) or (w.endswith("es") and w[:-2] in self.words)

    def most_common(self, candidates: Iterable[str]) -> list[str]:
        """``candidates`` that the model saw, most frequent first."""
        return sorted((c for c in candidates if c in self.words), key=lambda c: -self.counts.get(c, 0))
