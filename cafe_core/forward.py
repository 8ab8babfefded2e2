"""The CAFe training forward: one batch of (image, conversation, caption) -> LM loss inputs + embeddings.

``shared_forward`` runs the vision tower and projector **once per image** and feeds those features to
both the conversation pass (LM loss) and the image-embedding pass, as the paper's figure shows, using
transformers' ``mm_encoder_outputs`` hook. ``tree_forward`` goes further: one language-model pass in
which both embedding prompts are packed as prefix-tree branches of the conversation (same outputs,
the shared prefix is computed once). ``naive_forward`` is the authors' three independent passes;
it exists only as the reference that tests and ``benchmarks/train_step.py`` compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import prompts
from .family import multimodal_base
from .inputs import IGNORE_INDEX, PromptEncoder, check_images
from .pooling import pool_last_token

_TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class TrainBatch:
    """A collated training batch. Rows of ``image_prompt`` are the samples in ``embed_rows``; rows of
    ``text_prompt`` are those samples' captions, then the hard negatives of the samples in ``hard_rows``."""

    conv: dict  # input_ids, attention_mask, labels: (B, T)
    pixel: dict  # processor image outputs (pixel_values, image_sizes, ...) for the images in the batch
    images: list  # PIL images in the order of ``pixel`` (kept for the naive reference path)
    sample_image: list  # per sample: index into ``images`` of the image its caption pairs with, or None
    embed_rows: list  # samples with an image and a caption: they take part in the contrastive loss
    image_prompt: dict | None  # input_ids, attention_mask: (E, T_i)
    text_prompt: dict | None  # input_ids, attention_mask: (E + H, T_t)
    text_tags: torch.Tensor | None = None  # (E, F) optional multi-hot, see losses.match_mask
    image_tags: torch.Tensor | None = None
    hard_rows: list = field(default_factory=list)  # samples whose hard negative text follows the captions
    hard_tags: torch.Tensor | None = None  # (H, F)
    row_images: list = field(default_factory=list)  # per sample: indices into ``images`` of its conversation's photos
    image_token_counts: list = field(default_factory=list)  # per image: feature positions it fills
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
        if self.hard_tags is not None:
            self.hard_tags = self.hard_tags.to(device)
        return self


def sample_images(sample) -> tuple[list, int | None]:
    """(the images of a sample's conversation in order, index of the one its caption pairs with).

    A sample has ``.image`` (PIL or None) and optionally ``.images`` + ``.embed_image`` (several photos
    in one conversation, e.g. a grounded question over retrieved photos)."""
    images = list(getattr(sample, "images", None) or ([] if sample.image is None else [sample.image]))
    if not images:
        return [], None
    return images, int(getattr(sample, "embed_image", 0) or 0)


def collate(encoder: PromptEncoder, samples: Sequence, with_embeddings: bool = True) -> TrainBatch:
    """Collate samples (see ``sample_images``; ``.conversation`` turns, ``.caption`` str|None, optional
    ``.text_tags``/``.image_tags`` and ``.hard_caption``/``.hard_tags``) into a :class:`TrainBatch`."""
    images, sample_image, n_images, embed_of, row_images = [], [], [], [], []
    for s in samples:
        imgs, embed = sample_images(s)
        sample_image.append(None if embed is None else len(images) + embed)
        n_images.append(len(imgs))
        embed_of.append(embed)
        row_images.append(list(range(len(images), len(images) + len(imgs))))
        images.extend(imgs)
    check_images(images)
    chat = encoder.chat
    texts = [prompts.conversation_prompt(s.conversation, n_images=n, chat=chat) for s, n in zip(samples, n_images)]
    enc, blocks = encoder.encode_with_blocks(texts, images or None)
    conv = {k: enc[k] for k in _TEXT_KEYS}
    conv["labels"] = encoder.lm_labels(conv["input_ids"], conv["attention_mask"])
    pixel = {k: v for k, v in enc.items() if k not in _TEXT_KEYS}
    image_token_counts = [encoder.image_tokens(b) for row in blocks for b in row]

    embed_rows = [i for i, s in enumerate(samples) if sample_image[i] is not None and s.caption] if with_embeddings else []
    image_prompt = text_prompt = text_tags = image_tags = hard_tags = None
    hard_rows: list[int] = []
    if embed_rows:
        # The image prompt holds each embed row's own image as the conversation tokenised it.
        own_blocks = [[blocks[i][embed_of[i]]] for i in embed_rows]
        image_prompt = encoder.encode_spliced([prompts.image_embedding_prompt(chat)] * len(embed_rows), own_blocks)
        hard_rows = [i for i in embed_rows if getattr(samples[i], "hard_caption", None)]
        texts = [samples[i].caption for i in embed_rows] + [samples[i].hard_caption for i in hard_rows]
        text_prompt = dict(encoder.encode([prompts.text_embedding_prompt(t, chat) for t in texts]))
        if all(getattr(samples[i], "text_tags", None) is not None for i in embed_rows):
            text_tags = torch.stack([torch.as_tensor(samples[i].text_tags) for i in embed_rows])
            image_tags = torch.stack([torch.as_tensor(samples[i].image_tags) for i in embed_rows])
            if hard_rows:
                hard_tags = torch.stack([torch.as_tensor(samples[i].hard_tags) for i in hard_rows])
    return TrainBatch(conv, pixel, images, sample_image, embed_rows, image_prompt, text_prompt, text_tags, image_tags,
                      hard_rows, hard_tags, row_images, image_token_counts)


@dataclass
class ForwardOutput:
    lm_loss: torch.Tensor | None
    image_emb: torch.Tensor | None  # (E, D) float32, L2-normalised
    text_emb: torch.Tensor | None
    hard_text_emb: torch.Tensor | None = None  # (H, D): hard negative texts, see TrainBatch.hard_rows
    image_tokens: list | None = None  # per image: the (positions, D) features the LM reads (shared forward only)


def supervised_lm_loss(model, hidden: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over supervised tokens, with ``lm_head`` run only on the positions that
    predict one: (B, T, D) post-norm hidden states, (B, T) labels (-100 = not supervised).

    Equal to the model's own loss over full-sequence logits, which would cost (B, T, vocab): at a real
    checkpoint's 152k vocabulary and thousands of image tokens per photo, gigabytes for a few dozen
    answer tokens. ``reduction``: "mean" over supervised tokens, or "sum".
    """
    targets = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()  # (N_supervised, vocab)
    return F.cross_entropy(logits, targets[rows, cols], reduction=reduction)


# A row joins a length bucket while it is at most this much longer than the bucket's shortest row.
LENGTH_BUCKET_RATIO = 1.3


def length_buckets(lengths: Sequence[int], ratio: float = LENGTH_BUCKET_RATIO) -> list[list[int]]:
    """Row indices grouped by length (shortest first), so each group pads to little more than its own rows.

    A batch with a few long rows (several photos in one prompt, anyres photos of many tiles) would
    otherwise pad every row to the longest: 32 rows of ~330 tokens padded to ~700 doubled the language
    model's work on the demo recipe.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def image_features(image_out, batch: TrainBatch) -> list[torch.Tensor]:
    """Per image of the batch (in ``batch.images`` order), the (positions, D) features the language model
    reads where that image's tokens are. Families return them per image (LLaVA) or per sample (Idefics3);
    either way they come in the order the images' tokens appear, so one split by token counts serves all."""
    flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in image_out.pooler_output])
    if flat.shape[0] != sum(batch.image_token_counts):
        raise ValueError(f"the vision encoder gave {flat.shape[0]} feature positions for "
                         f"{sum(batch.image_token_counts)} image tokens")
    return list(torch.split(flat, batch.image_token_counts))


def _features(per_image: list[torch.Tensor], indices) -> dict | None:
    picked = [per_image[j] for j in indices]
    return {"image": BaseModelOutputWithPooling(pooler_output=picked)} if picked else None


def conversation_lm_loss(model, batch: TrainBatch, per_image: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The conversations' LM loss (mean over supervised tokens), one language-model pass per length
    bucket, each given its rows' precomputed image features."""
    base = multimodal_base(model)
    ids, mask, labels = batch.conv["input_ids"], batch.conv["attention_mask"], batch.conv["labels"]
    lengths = mask.sum(1).tolist()
    total = (labels[:, 1:] != IGNORE_INDEX).sum()
    loss = 0.0
    for rows in length_buckets(lengths):
        t = max(lengths[r] for r in rows)  # right padding: every real token is in [0, t)
        idx = torch.tensor(rows, device=ids.device)
        mm = _features(per_image, [j for r in rows for j in batch.row_images[r]]) if per_image else None
        hidden = base(input_ids=ids[idx, :t], attention_mask=mask[idx, :t], mm_encoder_outputs=mm).last_hidden_state
        loss = loss + supervised_lm_loss(model, hidden, labels[idx, :t], reduction="sum")
    return loss / total


def _split_texts(txt: torch.Tensor, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text pass's rows: the captions', then the hard negatives' (see TrainBatch.text_prompt)."""
    e = len(batch.embed_rows)
    return txt[:e], (txt[e:] if batch.hard_rows else None)


def shared_forward(model, batch: TrainBatch, need_lm: bool = True, need_embeddings: bool = True) -> ForwardOutput:
    """Vision tower + projector once per image; features reused by the LM pass and the image-embedding pass."""
    base = multimodal_base(model)
    per_image = None
    if batch.images:
        per_image = image_features(base.get_image_features(**batch.pixel, return_dict=True), batch)
    lm = img = txt = hard = None
    if need_lm:
        lm = conversation_lm_loss(model, batch, per_image)
    if need_embeddings and batch.embed_rows:
        subset = _features(per_image, [batch.sample_image[i] for i in batch.embed_rows])
        h = base(**batch.image_prompt, mm_encoder_outputs=subset).last_hidden_state
        img = pool_last_token(h, batch.image_prompt["attention_mask"])
        h = base(**batch.text_prompt).last_hidden_state
        txt, hard = _split_texts(pool_last_token(h, batch.text_prompt["attention_mask"]), batch)
    return ForwardOutput(lm, img, txt, hard, image_tokens=per_image)


def naive_forward(model, batch: TrainBatch, encoder: PromptEncoder, need_lm: bool = True,
                  need_embeddings: bool = True) -> ForwardOutput:
    """Reference: three independent passes (conversation with the model's own full-logits loss, image
    prompt, text prompt); vision runs twice."""
    base = multimodal_base(model)
    device = batch.conv["input_ids"].device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    lm = img = txt = hard = None
    if need_lm:
        lm = model(**batch.conv, **batch.pixel).loss
    if need_embeddings and batch.embed_rows:
        images = [batch.images[batch.sample_image[i]] for i in batch.embed_rows]
        enc = encoder.encode([prompts.image_embedding_prompt(encoder.chat)] * len(images), images, device=device,
                             dtype=dtype)
        img = pool_last_token(base(**enc).last_hidden_state, enc["attention_mask"])
        h = base(**batch.text_prompt).last_hidden_state
        txt, hard = _split_texts(pool_last_token(h, batch.text_prompt["attention_mask"]), batch)
    return ForwardOutput(lm, img, txt, hard)


# ---------------------------------------------------------------------------------------------------
# Prefix-tree forward: one language-model pass for the conversation and both embedding prompts.
# ---------------------------------------------------------------------------------------------------
def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _TreeLayout:
    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    allowed: torch.Tensor  # (B, T, T) bool: query q may attend to key k
    labels: torch.Tensor  # (B, T): the conversation's labels, -100 on branches and padding
    image_pos: list  # (row, slot) of each embed row's image-prompt embedding token
    text_pos: list  # (row, slot) of each embed row's text-prompt embedding token


def _tree_layout(batch: TrainBatch, pad_id: int, image_token_id: int) -> _TreeLayout | None:
    """Pack each conversation with the parts of its embedding prompts that differ from it.

    Row b = ``[conversation | image-prompt suffix | text-prompt suffix | padding]``. A suffix is what
    follows the longest common token prefix of that prompt and the conversation (system prompt, user
    header and, for the image prompt, the image tokens); it attends to that conversation prefix and
    causally to itself, with position ids continuing the prefix, so each prompt sees exactly the
    tokens and positions of its own standalone pass. Returns None when a suffix would contain image
    tokens (images placed after text): the image features could not be shared, so the caller falls back.
    """
    conv_ids, conv_mask = batch.conv["input_ids"], batch.conv["attention_mask"]
    convs = [row[: int(n)].tolist() for row, n in zip(conv_ids, conv_mask.sum(1))]
    branches: list[list[tuple[int, list[int]]]] = [[] for _ in convs]  # per row: (prefix length, suffix ids)
    for e, b in enumerate(batch.embed_rows):
        for prompt in (batch.image_prompt, batch.text_prompt):
            ids = prompt["input_ids"][e][: int(prompt["attention_mask"][e].sum())].tolist()
            p = min(_common_prefix(convs[b], ids), len(ids) - 1)  # >= 1 own token: the pooled one
            suffix = ids[p:]
            if image_token_id in suffix:
                return None
            branches[b].append((p, suffix))
    lengths = [len(c) + sum(len(s) for _, s in br) for c, br in zip(convs, branches)]
    B, T = len(convs), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=conv_ids.dtype)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=batch.conv["labels"].dtype)
    # seg: 0 = conversation, j >= 1 = branch j, -1 = padding; lim: conversation tokens a slot may see.
    seg = torch.full((B, T), -1, dtype=torch.long)
    lim = torch.zeros((B, T), dtype=torch.long)
    ends: list[list[int]] = []
    for b, (conv, br) in enumerate(zip(convs, branches)):
        n = len(conv)
        input_ids[b, :n] = torch.tensor(conv)
        position_ids[b, :n] = torch.arange(n)
        labels[b, :n] = batch.conv["labels"][b, :n]
        seg[b, :n], lim[b, :n] = 0, n
        row_ends, start = [], n
        for j, (p, suffix) in enumerate(br, start=1):
            stop = start + len(suffix)
            input_ids[b, start:stop] = torch.tensor(suffix)
            position_ids[b, start:stop] = torch.arange(p, p + len(suffix))
            seg[b, start:stop], lim[b, start:stop] = j, p
            row_ends.append(stop - 1)
            start = stop
        ends.append(row_ends)
    idx = torch.arange(T)
    causal = idx[None, :, None] >= idx[None, None, :]  # (1, Tq, Tk)
    same = seg[:, :, None] == seg[:, None, :]
    from_prefix = (seg[:, None, :] == 0) & (idx[None, None, :] < lim[:, :, None])
    allowed = causal & (same | from_prefix) & (seg[:, None, :] >= 0)
    allowed |= torch.eye(T, dtype=torch.bool)[None]  # padding queries see themselves (no empty softmax rows)
    image_pos = [(b, ends[b][0]) for b in batch.embed_rows]
    text_pos = [(b, ends[b][1]) for b in batch.embed_rows]
    return _TreeLayout(input_ids, position_ids, allowed, labels, image_pos, text_pos)


def tree_forward(model, batch: TrainBatch, encoder: PromptEncoder, need_lm: bool = True,
                 need_embeddings: bool = True) -> ForwardOutput:
    """CAFe forward with one language-model pass per batch: same outputs as :func:`shared_forward`.

    The image-embedding prompt shares its prefix (system prompt, user header, image tokens) with the
    conversation, and the text-embedding prompt shares the system prompt; both are packed after the
    conversation as branches of a prefix tree with a 4D attention mask and matching position ids
    (see ``_tree_layout``). Vision runs once per image, and the shared prefix is computed once instead
    of three times. Needs an attention implementation that takes a custom 4D mask (eager or sdpa, not
    flash-attention). Falls back to :func:`shared_forward` when only one loss is needed, when the batch
    has hard negative texts, or when the prompts do not share the image tokens.
    """
    if not (need_lm and need_embeddings and batch.embed_rows) or batch.hard_rows:
        return shared_forward(model, batch, need_lm, need_embeddings)
    layout = _tree_layout(batch, encoder.pad_id, encoder.image_token_id)
    if layout is None:
        return shared_forward(model, batch, need_lm, need_embeddings)
    impl = getattr(model.config, "_attn_implementation", None) or ""
    if "flash" in impl:
        raise ValueError(f"tree_forward needs a custom 4D attention mask, which {impl!r} does not take; use sdpa or eager")
    base = multimodal_base(model)
    device = batch.conv["input_ids"].device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    # Additive float mask (0 = attend): understood by both the eager and the sdpa attention paths.
    mask = torch.zeros(layout.allowed.shape, dtype=dtype).masked_fill(~layout.allowed, torch.finfo(dtype).min)
    image_out = base.get_image_features(**batch.pixel, return_dict=True) if batch.images else None
    hidden = base(
        input_ids=layout.input_ids.to(device),
        attention_mask=mask[:, None].to(device),
        position_ids=layout.position_ids.to(device),
        mm_encoder_outputs={"image": image_out} if image_out is not None else None,
    ).last_hidden_state  # (B, T, D), after the final norm
    lm = supervised_lm_loss(model, hidden, layout.labels)

    def pooled(positions):
        rows = torch.tensor([b for b, _ in positions], device=device)
        cols = torch.tensor([t for _, t in positions], device=device)
        return F.normalize(hidden[rows, cols].float(), dim=-1)

    return ForwardOutput(lm, pooled(layout.image_pos), pooled(layout.text_pos))
