"""The CAFe training forward: one batch of (image, conversation, caption) -> LM loss inputs + embeddings.

``shared_forward`` runs the vision tower and projector **once per image** and feeds those features to
both the conversation pass (LM loss) and the image-embedding pass, as the paper's figure shows, using
transformers' ``mm_encoder_outputs`` hook. ``naive_forward`` is the authors' three independent passes;
it exists only as the reference that tests and ``benchmarks/train_step.py`` compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import prompts
from .inputs import PromptEncoder, check_images
from .pooling import pool_last_token

_TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class TrainBatch:
    """A collated training batch. Rows of ``image_prompt``/``text_prompt`` are the samples in ``embed_rows``."""

    conv: dict  # input_ids, attention_mask, labels: (B, T)
    pixel: dict  # processor image outputs (pixel_values, image_sizes, ...) for the images in the batch
    images: list  # PIL images in the order of ``pixel`` (kept for the naive reference path)
    sample_image: list  # per sample: index into ``images`` or None
    embed_rows: list  # samples with an image and a caption: they take part in the contrastive loss
    image_prompt: dict | None  # input_ids, attention_mask: (E, T_i)
    text_prompt: dict | None  # input_ids, attention_mask: (E, T_t)
    text_tags: torch.Tensor | None = None  # (E, F) optional multi-hot, see losses.match_mask
    image_tags: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device, dtype=None) -> "TrainBatch":
        def move(d):
            if d is None:
                return None
            out = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in d.items()}
            if dtype is not None and "pixel_values" in out:
                out["pixel_values"] = out["pixel_values"].to(dtype)
            return out

        self.conv, self.pixel = move(self.conv), move(self.pixel)
        self.image_prompt, self.text_prompt = move(self.image_prompt), move(self.text_prompt)
        if self.text_tags is not None:
            self.text_tags, self.image_tags = self.text_tags.to(device), self.image_tags.to(device)
        return self


def collate(encoder: PromptEncoder, samples: Sequence, with_embeddings: bool = True) -> TrainBatch:
    """Collate samples (``.image`` PIL|None, ``.conversation`` turns, ``.caption`` str|None, optional
    ``.text_tags``/``.image_tags``) into a :class:`TrainBatch`."""
    images, sample_image = [], []
    for s in samples:
        if s.image is not None:
            sample_image.append(len(images))
            images.append(s.image)
        else:
            sample_image.append(None)
    check_images(images)
    texts = [prompts.conversation_prompt(s.conversation, n_images=int(s.image is not None)) for s in samples]
    enc = encoder.encode(texts, images or None)
    conv = {k: enc[k] for k in _TEXT_KEYS}
    conv["labels"] = encoder.lm_labels(conv["input_ids"], conv["attention_mask"])
    pixel = {k: v for k, v in enc.items() if k not in _TEXT_KEYS}

    embed_rows = [i for i, s in enumerate(samples) if s.image is not None and s.caption] if with_embeddings else []
    image_prompt = text_prompt = text_tags = image_tags = None
    if embed_rows:
        counts = (conv["input_ids"] == encoder.image_token_id).sum(1).tolist()  # image tokens per sample
        image_prompt = dict(encoder.encode_expanded([prompts.image_embedding_prompt()] * len(embed_rows),
                                                    [[counts[i]] for i in embed_rows]))
        text_prompt = dict(encoder.encode([prompts.text_embedding_prompt(samples[i].caption) for i in embed_rows]))
        if all(getattr(samples[i], "text_tags", None) is not None for i in embed_rows):
            text_tags = torch.stack([torch.as_tensor(samples[i].text_tags) for i in embed_rows])
            image_tags = torch.stack([torch.as_tensor(samples[i].image_tags) for i in embed_rows])
    return TrainBatch(conv, pixel, images, sample_image, embed_rows, image_prompt, text_prompt, text_tags, image_tags)


@dataclass
class ForwardOutput:
    lm_loss: torch.Tensor | None
    image_emb: torch.Tensor | None  # (E, D) float32, L2-normalised
    text_emb: torch.Tensor | None


def multimodal_base(model):
    """The multimodal base model (vision + projector + LM, no lm_head) of an HF ForConditionalGeneration,
    looking through a peft wrapper if present."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.model


def shared_forward(model, batch: TrainBatch, need_lm: bool = True, need_embeddings: bool = True) -> ForwardOutput:
    """Vision tower + projector once per image; features reused by the LM pass and the image-embedding pass."""
    base = multimodal_base(model)
    image_out = None
    if batch.images:
        image_out = base.get_image_features(**batch.pixel, return_dict=True)
    lm = img = txt = None
    if need_lm:
        mm = {"image": image_out} if image_out is not None else None
        lm = model(**batch.conv, mm_encoder_outputs=mm).loss
    if need_embeddings and batch.embed_rows:
        feats = image_out.pooler_output
        subset = BaseModelOutputWithPooling(pooler_output=[feats[batch.sample_image[i]] for i in batch.embed_rows])
        h = base(**batch.image_prompt, mm_encoder_outputs={"image": subset}).last_hidden_state
        img = pool_last_token(h, batch.image_prompt["attention_mask"])
        h = base(**batch.text_prompt).last_hidden_state
        txt = pool_last_token(h, batch.text_prompt["attention_mask"])
    return ForwardOutput(lm, img, txt)


def naive_forward(model, batch: TrainBatch, encoder: PromptEncoder, need_lm: bool = True,
                  need_embeddings: bool = True) -> ForwardOutput:
    """Reference: three independent passes (conversation, image prompt, text prompt); vision runs twice."""
    base = multimodal_base(model)
    device = batch.conv["input_ids"].device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    lm = img = txt = None
    if need_lm:
        lm = model(**batch.conv, **batch.pixel).loss
    if need_embeddings and batch.embed_rows:
        images = [batch.images[batch.sample_image[i]] for i in batch.embed_rows]
        enc = encoder.encode([prompts.image_embedding_prompt()] * len(images), images, device=device, dtype=dtype)
        img = pool_last_token(base(**enc).last_hidden_state, enc["attention_mask"])
        h = base(**batch.text_prompt).last_hidden_state
        txt = pool_last_token(h, batch.text_prompt["attention_mask"])
    return ForwardOutput(lm, img, txt)
