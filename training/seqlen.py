"""A per-sample cap on the conversation's length in tokens (``TrainConfig.max_seq_len``).

Training memory grows with the longest conversation of a batch: a real checkpoint's photo is
1,000-7,000 image tokens (LLaVA-OneVision's anyres crops, SmolVLM's tiles), and packed QA turns add
to it. With a cap, a sample whose conversation (image tokens included, counted exactly as the
processor writes them) is longer keeps its first exchange and as many of the following ones as fit:
turns are dropped from the end, whole exchanges at a time. A sample whose first exchange alone does
not fit (its images are too many tokens, or the first answer too long) is skipped; both counts are
logged and written to metrics.jsonl. The image-embedding prompt (the same image, a short instruction)
is shorter than any conversation with that image, so the conversation is what the cap bounds.

The image part of a length depends only on the images' sizes (anyres grids and tile counts come from
the size), so the processor runs once per distinct set of sizes; the text is tokenised per sample.
"""

from __future__ import annotations

import dataclasses
import logging

from cafe_core import prompts
from cafe_core.forward import sample_images

log = logging.getLogger("training")

MAX_SKIP_WARNINGS = 10


class SequenceBudget:
    """Fits samples to ``max_len`` conversation tokens (see module doc); ``fit(sample)`` returns the sample,
    a copy with fewer turns, or None (skipped)."""

    def __init__(self, encoder, max_len: int):
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        self.encoder, self.max_len = encoder, max_len
        self._image_extra: dict[tuple, int] = {}  # image sizes -> tokens the images add beyond their placeholders
        self.truncated = 0  # samples that lost turns
        self.skipped = 0  # samples dropped: their first exchange does not fit

    def image_extra(self, images) -> int:
        """Tokens the processor writes for ``images`` (one prompt) beyond one placeholder token each."""
        key = tuple(im.size for im in images)
        if key not in self._image_extra:
            text = prompts.IMAGE_PLACEHOLDER * len(images)
            _, blocks = self.encoder.encode_with_blocks([text], list(images))
            self._image_extra[key] = sum(len(b) for b in blocks[0]) - len(images)
        return self._image_extra[key]

    def length(self, turns, images) -> int:
        """Tokens of the conversation ``turns`` over ``images``, as collate would encode it (no padding)."""
        return self._text_length(turns, images) + (self.image_extra(images) if images else 0)

    def fit(self, sample):
        images, _ = sample_images(sample)
        turns = list(sample.conversation)
        extra = self.image_extra(images) if images else 0
        if self._text_length(turns, images) + extra <= self.max_len:
            return sample
        while len(turns) > 2:
            turns.pop()
            while len(turns) > 2 and turns[-1].role != "assistant":  # end on an answer: whole exchanges
                turns.pop()
            if self._text_length(turns, images) + extra <= self.max_len:
                self.truncated += 1
                return _with_turns(sample, turns)
        self.skipped += 1
        if self.skipped <= MAX_SKIP_WARNINGS:
            log.warning("skipping sample %s: its first exchange is %d tokens, over max_seq_len %d",
                        getattr(sample, "id", "?"), self._text_length(turns, images) + extra, self.max_len)
        return None

    def _text_length(self, turns, images) -> int:
        text = prompts.conversation_prompt(turns, n_images=len(images), chat=self.encoder.chat)
        return len(self.encoder.tokenizer(self.encoder.family_text(text), add_special_tokens=False)["input_ids"])

    def counts(self) -> dict:
        """What metrics.jsonl records (cumulative over the run, this process)."""
        return {"too_long_truncated": self.truncated, "too_long_skipped": self.skipped}


def _with_turns(sample, turns):
    if dataclasses.is_dataclass(sample):
        return dataclasses.replace(sample, conversation=turns)
    import copy

    out = copy.copy(sample)
    out.conversation = turns
    return out
