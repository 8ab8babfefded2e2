"""How many crops of a photo the model reads when it *embeds* it: the indexing cost knob.

- "native": what the checkpoint's processor does (LLaVA-OneVision's anyres: a base view plus up to
  9 tiles, 1,800-3,300 image tokens for a phone photo at 384 px tiles; SmolVLM: tiles plus a global
  view);
- "base": one view of the whole photo (LLaVA-OneVision: the base crop, 729 tokens + 1 newline, the
  model's own multi-image path; SmolVLM: no splitting, 64 tokens at 512 px). Several times cheaper;
  plain LLaVA reads one crop either way.

Generation and training keep the processor's native crops: this only changes embeddings, so the
setting is part of the model's fingerprint and an index never mixes vectors of two settings.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import prompts
from .errors import InputError
from .family import family_for, multimodal_base

IMAGE_CROPS = ("native", "base")


def resolve_crops(crops: str | None, device: torch.device) -> str:
    """"auto"/None: the cheapest ("base") on CPU, "native" on a GPU."""
    if crops in (None, "auto"):
        return "base" if device.type == "cpu" else "native"
    if crops not in IMAGE_CROPS:
        raise InputError(f"image_crops must be one of {IMAGE_CROPS} or auto, got {crops!r}")
    return crops


def changes_vectors(config, crops: str) -> bool:
    """Does this crop setting give other vectors than "native" for this model? (then it is part of the
    model's fingerprint; a plain LLaVA reads one crop either way)."""
    return crops != "native" and config.model_type in family_for(config).multi_crop_types


def base_view_inputs(model, encoder, texts: Sequence[str], images: Sequence[Image.Image], device, dtype):
    """(batch, mm_encoder_outputs or None) to embed ``texts`` (one image placeholder each) over the base
    view of each image; (encoder.encode(...), None) when the model has nothing cheaper."""
    family = family_for(model.config)
    if model.config.model_type not in family.multi_crop_types:
        return encoder.encode(texts, images, device=device, dtype=dtype), None
    return _BASE_VIEW[family.name](model, encoder, texts, images, device, dtype)


def _idefics3_base(model, encoder, texts, images, device, dtype):
    # The processor's own switch: no tile splitting, one 512 px view (64 tokens for SmolVLM).
    texts = [encoder.family_text(t) for t in texts]
    batch = encoder.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt",
                              do_image_splitting=False).to(device)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch, None


def _onevision_base(model, encoder, texts, images, device, dtype):
    # The processor writes a base-view block (729 image tokens + the newline) for images of a
    # multi-image prompt, and the model reads base views for them (batch_num_images > 1): both used here.
    block = _onevision_base_block(encoder)
    views = list(images) if len(images) > 1 else [images[0], images[0]]  # one photo read as a pair: base views
    pixels = encoder.processor.image_processor(views, return_tensors="pt")
    ids = encoder.encode_spliced(texts, [[block]] * len(texts))
    batch = {k: v.to(device) for k, v in ids.items()}
    base = multimodal_base(model)
    feats = base.get_image_features(pixel_values=pixels["pixel_values"].to(device, dtype),
                                    image_sizes=pixels["image_sizes"].to(device),
                                    batch_num_images=torch.tensor([len(views)], device=device), return_dict=True)
    pooled = list(feats.pooler_output)[: len(images)]
    return batch, {"image": BaseModelOutputWithPooling(pooler_output=pooled)}


def _onevision_base_block(encoder) -> list[int]:
    """The token block the processor writes for a base view (worked out once per encoder)."""
    if encoder.base_view_block is None:
        probe = Image.new("RGB", (64, 64))
        text = encoder.family_text(f"{prompts.IMAGE_PLACEHOLDER}{prompts.IMAGE_PLACEHOLDER}")
        _, blocks = encoder.encode_with_blocks([text], [probe, probe])  # one prompt, two photos: base views
        encoder.base_view_block = blocks[0][0]
    return encoder.base_view_block


# The base-view path of each family with multi_crop_types (cafe_core.family), by family name.
_BASE_VIEW = {"llava": _onevision_base, "idefics3": _idefics3_base}
