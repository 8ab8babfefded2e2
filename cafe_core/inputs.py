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


class PromptEncoder:
    """Tokenises rendered prompts (with the model family's image tokens) and builds LM labels."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"  # pooling and training assume right padding
        if self.tokenizer.convert_tokens_to_ids(prompts.IM_END) in (None, self.tokenizer.unk_token_id):
            raise InputError("this tokenizer has no <|im_end|> token: CAFe prompts need a ChatML (Qwen2-style) model")
        self.im_end_id = self.tokenizer.convert_tokens_to_ids(prompts.IM_END)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.im_end_id
        self.image_token = getattr(processor, "image_token", prompts.IMAGE_PLACEHOLDER)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.assistant_header = self.tokenizer(prompts.ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]

    def family_text(self, text: str) -> str:
        """Replace our neutral ``<image>`` placeholder by the processor's own image token."""
        if self.image_token == prompts.IMAGE_PLACEHOLDER:
            return text
        return text.replace(prompts.IMAGE_PLACEHOLDER, self.image_token)

    def encode(self, texts: Sequence[str], images: Sequence[Image.Image] | None = None, device=None, dtype=None):
        """Right-padded ``BatchFeature`` for rendered prompts; images in prompt order, one flat list."""
        texts = [self.family_text(t) for t in texts]
        kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images:
            kwargs["images"] = list(images)
        batch = self.processor(**kwargs)
        if device is not None:
            batch = batch.to(device)
            if dtype is not None and "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch

    def encode_expanded(self, texts: Sequence[str], image_token_counts: Sequence[Sequence[int]]):
        """Tokenise prompts whose image placeholders are expanded to known token counts, without images.

        Used for the image-embedding prompt in training: its images were already preprocessed for the
        conversation, so the processor need not run again; ``image_token_counts[i]`` lists, per
        placeholder of text ``i``, how many image tokens the model expects there.
        """
        expanded = []
        for text, counts in zip(texts, image_token_counts):
            pieces = self.family_text(text).split(self.image_token)
            if len(pieces) - 1 != len(counts):
                raise InputError(f"prompt has {len(pieces) - 1} image placeholders but {len(counts)} counts")
            out = pieces[0]
            for n, piece in zip(counts, pieces[1:]):
                out += self.image_token * n + piece
            expanded.append(out)
        return self.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False)

    def lm_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Labels for next-token loss: only assistant answers and their closing ``<|im_end|>``; rest -100."""
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        header = list(self.assistant_header)
        h = len(header)
        for b, (row, n) in enumerate(zip(input_ids.tolist(), attention_mask.sum(1).tolist())):
            pos = 0
            while pos + h <= n:
                if row[pos : pos + h] == header:
                    start = end = pos + h
                    while end < n and row[end] != self.im_end_id:
                        end += 1
                    stop = min(end + 1, n)  # include the closing <|im_end|>
                    labels[b, start:stop] = input_ids[b, start:stop]
                    pos = stop
                else:
                    pos += 1
        return labels
