"""Many prompts about one image, with the image run through the model once.

Scoring asks several questions about the same photo (the app's evidence check: "Is there a purple star
in the photo?", "What color is the star?", "What shape is the purple object?", size likelihoods). Each
prompt begins with the same tokens up to and including the image's block, and that beginning is nearly
all of the work: the vision tower, and the language model over 144 image tokens for the demo model or
1,800-3,300 for LLaVA-OneVision. ``ImagePrefixes`` runs such a beginning once, keeps its keys and values,
and runs each prompt's own few tokens on top of them.

Exactness: the image placeholder is a special token and an image block starts and ends with special
tokens, so a prompt tokenises as its prefix (through the processor) followed by the rest (through the
tokenizer alone), the same ids as the processor gives the whole prompt (``PromptEncoder.encode_spliced``
relies on the same fact). Positions continue from the prefix's length, so every hidden state equals the
whole prompt's up to float rounding (tests compare both on tiny models of each family).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from . import prompts


@dataclass
class _Prefix:
    image: Image.Image  # held so that its id() is not reused while the entry lives
    cache: Any  # the prefix's transformers Cache (keys and values of every layer), batch of one
    length: int


def split_after_image(text: str) -> tuple[str, str] | None:
    """(the prompt up to and including its last image placeholder, the rest); None without a placeholder."""
    at = text.rfind(prompts.IMAGE_PLACEHOLDER)
    if at < 0:
        return None
    cut = at + len(prompts.IMAGE_PLACEHOLDER)
    return text[:cut], text[cut:]


class ImagePrefixes:
    """Cached prompt beginnings, keyed by (image object, prefix text). Live for one scoring call, or for
    a ``CafeModel.sharing_image_prefixes()`` block (the evidence check asks several calls' worth of
    questions about the same few photos); dropped after, since each holds a layer-by-layer cache."""

    def __init__(self, base: torch.nn.Module, encoder, device, dtype):
        self.base, self.encoder, self.device, self.dtype = base, encoder, device, dtype
        self._entries: dict[tuple[int, str], _Prefix] = {}

    def tail_states(self, texts: Sequence[str], image: Image.Image, tails: Sequence[int],
                    batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per prompt about ``image``: (last hidden states at its last ``tail + 1`` positions, its last
        ``tail`` token ids); see ``CafeModel._tail_states``. None when the prompts do not share a prefix
        ending with the image, or a tail reaches into it: the caller runs them whole."""
        split = [split_after_image(t) for t in texts]
        if any(s is None for s in split) or len({s[0] for s in split}) != 1:
            return None
        suffixes = [self.encoder.tokenizer(self.encoder.family_text(rest), add_special_tokens=False)["input_ids"]
                    for _, rest in split]
        if any(len(ids) < tail + 1 for ids, tail in zip(suffixes, tails)):
            return None
        prefix = self._prefix(split[0][0], image)
        out = []
        for i in range(0, len(suffixes), batch_size):
            rows, row_tails = suffixes[i : i + batch_size], tails[i : i + batch_size]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), self.encoder.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), prefix.length + width), dtype=torch.long)
            mask[:, : prefix.length] = 1
            for r, ids in enumerate(rows):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                mask[r, prefix.length : prefix.length + len(ids)] = 1
            cache = copy.deepcopy(prefix.cache)  # the suffix forward appends to it
            cache.batch_repeat_interleave(len(rows))
            hidden = self.base(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                               cache=cache, use_cache=True).last_hidden_state
            for r, (ids, tail) in enumerate(zip(rows, row_tails)):
                n = len(ids)
                out.append((hidden[r, n - tail - 1 : n].clone(), input_ids[r, n - tail : n].to(self.device)))
        return out

    def _prefix(self, text: str, image: Image.Image) -> _Prefix:
        key = (id(image), text)
        if key not in self._entries:
            batch = self.encoder.encode([text], [image], device=self.device, dtype=self.dtype)
            cache = self.base(**batch, use_cache=True).cache
            self._entries[key] = _Prefix(image, cache, int(batch["input_ids"].shape[1]))
        return self._entries[key]
