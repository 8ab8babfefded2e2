"""Turning prompt strings and images into model inputs, the same way at train, index and query time."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from . import prompts
from .errors import InputError

IGNORE_INDEX = -100


def check_images(images: Sequence) -> list[Image.Image]:
    """Validate images: PIL, RGB, non-empty. Callers convert modes and apply EXIF orientation first."""
    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise InputError(f"image {i} is a {type(im).__name__}, expected a PIL.Image")
        if im.width == 0 or im.height == 0:
            raise InputError(f"image {i} has zero size ({im.width}x{im.height})")
        if im.mode != "RGB":
            raise InputError(f"image {i} has mode {im.mode!r}; convert it to RGB first (e.g. image.convert('RGB'))")
        out.append(im)
    return out


def check_texts(texts: Sequence) -> list[str]:
    """Validate texts to embed: at least one, each a non-empty string."""
    texts = list(texts)
    if not texts:
        raise InputError("embed_texts needs at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text {i} is empty; give a non-empty string")
    return texts


class PromptEncoder:
    """Tokenises rendered prompts (with the model family's image tokens) and builds LM labels.

    ``family``: the checkpoint's cafe_core.family.Family, whose chat format the prompts are written in
    (default: LLaVA's ChatML); CafeModel and the trainer pass ``family_for(model.config)``.
    """

    def __init__(self, processor, family=None):
        from .family import LLAVA

        self.processor = processor
        self.family = family or LLAVA
        self.chat = self.family.chat
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"  # pooling and training assume right padding
        end_id = self.tokenizer.convert_tokens_to_ids(self.chat.end)
        if end_id in (None, self.tokenizer.unk_token_id):
            raise InputError(f"this tokenizer has no {self.chat.end} token, which {self.family.name} models end "
                             "their turns with: is the checkpoint's family right?")
        self.end_id = end_id  # closes every turn; the pooled token of embedding prompts; stops generation
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        self.image_token = getattr(processor, "image_token", prompts.IMAGE_PLACEHOLDER)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.assistant_header = self.tokenizer(self.chat.generation_header, add_special_tokens=False)["input_ids"]
        self._block_ids: dict[str, list[int]] = {}
        self.base_view_block: list[int] | None = None  # the image block of a base view (cafe_core.crops)

    def family_text(self, text: str) -> str:
        """Replace our neutral ``<image>`` placeholder by the processor's own image token."""
        if self.image_token == prompts.IMAGE_PLACEHOLDER:
            return text
        return text.replace(prompts.IMAGE_PLACEHOLDER, self.image_token)

    def encode(self, texts: Sequence[str], images: Sequence[Image.Image] | None = None, device=None, dtype=None):
        """Right-padded ``BatchFeature`` for rendered prompts; images in prompt order, one flat list."""
        return self.encode_with_blocks(texts, images, device, dtype)[0]

    def encode_with_blocks(self, texts: Sequence[str], images: Sequence[Image.Image] | None = None, device=None,
                           dtype=None):
        """``encode`` plus, per text, the token ids each of its images became (its "block"), in order.

        A block is what the processor wrote for one image placeholder: image tokens and, in some
        families, the tokens around them (Idefics3: ``<fake_token_around_image>``, ``<global-img>``,
        row/column tags). Blocks let a prompt reuse an image's tokens without preprocessing it again.
        """
        texts = [self.family_text(t) for t in texts]
        kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images:
            kwargs.update(images=self._per_text(texts, list(images)), return_text_replacement_offsets=True)
        batch = self.processor(**kwargs)
        offsets = batch.pop("text_replacement_offsets", None) or [[] for _ in texts]
        blocks = [[self._block(o["replacement"]) for o in row if o.get("type") == "image"] for row in offsets]
        if device is not None:
            batch = batch.to(device)
            if dtype is not None and "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch, blocks

    def _per_text(self, texts: Sequence[str], images: list) -> list[list]:
        """The flat image list split by text (the processors' own multi-image convention: LLaVA-OneVision
        reads the images of a several-photo prompt as base views)."""
        counts = [t.count(self.image_token) for t in texts]
        if sum(counts) != len(images):
            raise InputError(f"the prompts have {sum(counts)} image placeholders but {len(images)} images were given")
        nested, start = [], 0
        for n in counts:
            nested.append(images[start : start + n])
            start += n
        return nested

    def _block(self, replacement: str) -> list[int]:
        # A replacement starts and ends with special tokens, so it tokenises the same alone as in context.
        if replacement not in self._block_ids:
            self._block_ids[replacement] = self.tokenizer(replacement, add_special_tokens=False)["input_ids"]
        return self._block_ids[replacement]

    def image_tokens(self, block: Sequence[int]) -> int:
        """How many image-feature positions a block holds."""
        return sum(1 for t in block if t == self.image_token_id)

    def encode_spliced(self, texts: Sequence[str], blocks: Sequence[Sequence[Sequence[int]]]):
        """Tokenise prompts whose image placeholders are replaced by given image blocks, without images.

        Used for the image-embedding prompt in training: its images were already preprocessed for the
        conversation, so the processor need not run again; ``blocks[i]`` lists, per placeholder of text
        ``i``, the token ids of the image there (see ``encode_with_blocks``). Special tokens split
        tokenisation, so this equals what the processor would produce.
        """
        rows = []
        for text, row_blocks in zip(texts, blocks):
            pieces = self.family_text(text).split(self.image_token)
            if len(pieces) - 1 != len(row_blocks):
                raise InputError(f"prompt has {len(pieces) - 1} image placeholders but {len(row_blocks)} blocks")
            ids = self._ids(pieces[0])
            for block, piece in zip(row_blocks, pieces[1:]):
                ids += list(block) + self._ids(piece)
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def lm_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Labels for next-token loss: only assistant answers and their closing end-of-turn token; rest -100."""
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        header = list(self.assistant_header)
        h = len(header)
        for b, (row, n) in enumerate(zip(input_ids.tolist(), attention_mask.sum(1).tolist())):
            pos = 0
            while pos + h <= n:
                if row[pos : pos + h] == header:
                    start = end = pos + h
                    while end < n and row[end] != self.end_id:
                        end += 1
                    stop = min(end + 1, n)  # include the closing end-of-turn token
                    labels[b, start:stop] = input_ids[b, start:stop]
                    pos = stop
                else:
                    pos += 1
        return labels
