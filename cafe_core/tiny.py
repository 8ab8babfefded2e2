"""Tiny image-text-to-text models, built from config, for tests and the embedded default.

No pretrained weights can be downloaded here, so tests run on models of the *same transformers
classes* as real checkpoints (``LlavaOnevisionForConditionalGeneration``, ``LlavaForConditionalGeneration``)
with tiny configs, a byte-level BPE tokenizer trained locally with Qwen's ChatML special tokens and
chat template, and stock processors. ``save_tiny`` output loads back with plain
``AutoModelForImageTextToText.from_pretrained`` + ``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from . import prompts

SPECIAL_TOKENS = ["<|endoftext|>", prompts.IM_START, prompts.IM_END, "<image>", "<video>"]
# SmolVLM's tokenizer adds these (Idefics3's processor frames each image tile with them).
IDEFICS3_TOKENS = [prompts.SMOLVLM.end, "<fake_token_around_image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]

# Qwen2's pre-tokenizer split, so the tiny tokenizer behaves like the real one on text.
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A small corpus for the tokenizer: the prompts, the photo vocabulary the demo model talks about, and
# everyday words, so that common words become single tokens and anything else still encodes (byte-level).
_CORPUS_WORDS = """
red green blue yellow purple orange pink brown white gray grey black cyan magenta violet gold silver
circle square triangle star rectangle oval heart diamond shape shapes object objects thing things
small large big tiny huge medium left middle right center top bottom corner side background foreground
one two three four five six seven eight nine ten zero none nothing no yes a an the is are there
what which how many much color colour colors where who when why photo photos picture image images
of in on at with and or but to from by for this that these those it its it's some any all each every
describe the photo compress this image sentence in one word find like matches answer question
a photo of a red circle on the left and a small blue star on the right on a gray background
is there a green triangle in the photo how many squares are there what shape is the purple object
what color is the background what is in the middle what is on the left cite photos according to
dog cat tree house car beach mountain city street sky sun night day snow rain people person family
you are a helpful assistant i found no matching photo not sure cannot see the photos show
""".split()


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    lines = [" ".join(_CORPUS_WORDS[i : i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += [w.capitalize() + "?" for w in _CORPUS_WORDS] + [f" {w}." for w in _CORPUS_WORDS]
    lines += [prompts.SYSTEM_PROMPT, prompts.IMAGE_EMBED_INSTRUCTION, prompts.TEXT_EMBED_INSTRUCTION,
              prompts.MULTIMODAL_EMBED_INSTRUCTION, prompts.DESCRIBE_INSTRUCTION, "system\nuser\nassistant\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok


def build_tokenizer(vocab_size: int = 600, chat: prompts.ChatFormat = prompts.CHATML, extra_special: list[str] = ()):
    """A Qwen2Tokenizer over a byte-level BPE trained here, with ChatML special tokens (plus
    ``extra_special``) and ``chat``'s template."""
    import json

    from transformers import Qwen2Tokenizer

    trained = json.loads(_train_tokenizer(vocab_size).to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:] + list(extra_special)})
    tok.chat_template = chat.template
    return tok


@dataclass
class TinyPreset:
    """Sizes of a tiny model; the defaults give a ~1M-parameter model that runs fast on CPU."""

    arch: str  # "llava", "llava-onevision" or "idefics3" (SmolVLM)
    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vocab_size: int = 600
    tie_embeddings: bool = True  # share the input embeddings with the LM head (Qwen2-0.5B does)
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, TinyPreset] = {
    "llava": TinyPreset("llava"),
    "llava-onevision": TinyPreset("llava-onevision", image_size=32, patch_size=8),
    # SmolVLM's architecture (Idefics3: SigLIP tower, pixel shuffle by 2, Llama language model, SmolVLM
    # chat format): 32 px tiles of patch 8 -> 16 patches -> 4 image tokens per tile; photos larger than one
    # tile are split into up to 2x2 tiles plus a downscaled global view, as SmolVLM does at 512 px.
    "smolvlm": TinyPreset("idefics3", image_size=32, patch_size=8, extra={"scale_factor": 2, "max_tiles_side": 2}),
    # The shipped demo model's architecture (plain LLaVA: a fixed 12x12 grid of 144 image tokens at 96 px).
    # Patch 8 rather than 12: with the same vision tower, a shape/colour probe trained 400 steps from
    # scratch got 26% of photos' object sets exactly right at 144 tokens vs 10% at 64 tokens (64 px /
    # patch 8 and 128 px / patch 16 gave 9-10%: the grid, not the pixels, is what limits shapes).
    "llava-demo": TinyPreset(
        "llava", image_size=96, patch_size=8, vision_hidden=128, vision_layers=3, vision_heads=2,
        text_hidden=192, text_layers=3, text_heads=3, text_kv_heads=1, text_intermediate=512, vocab_size=800,
    ),
    # llava-demo with its own LM head: with tied embeddings the four shape words' input embeddings
    # collapsed during LM pretraining (the LM could not yet see shapes, so their output scores were
    # equal and the shared vectors were pulled together), leaving text embeddings shape-blind.
    "llava-demo-untied": TinyPreset(
        "llava", image_size=96, patch_size=8, vision_hidden=128, vision_layers=3, vision_heads=2,
        text_hidden=192, text_layers=3, text_heads=3, text_kv_heads=1, text_intermediate=512, vocab_size=800,
        tie_embeddings=False,
    ),
    # The previous demo architecture (64 image tokens), kept to reproduce the README's comparison with it.
    "llava-demo-p12": TinyPreset(
        "llava", image_size=96, patch_size=12, vision_hidden=128, vision_layers=3, vision_heads=2,
        text_hidden=192, text_layers=3, text_heads=3, text_kv_heads=1, text_intermediate=512, vocab_size=800,
    ),
}


def _configs(p: TinyPreset, vocab_size: int):
    from transformers import Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=p.vision_hidden, intermediate_size=p.vision_hidden * 4, num_hidden_layers=p.vision_layers,
        num_attention_heads=p.vision_heads, image_size=p.image_size, patch_size=p.patch_size,
    )
    text = Qwen2Config(
        vocab_size=vocab_size, hidden_size=p.text_hidden, intermediate_size=p.text_intermediate,
        num_hidden_layers=p.text_layers, num_attention_heads=p.text_heads, num_key_value_heads=p.text_kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=p.tie_embeddings, rope_theta=10000.0,
    )
    return vision, text


def build_tiny(preset: str | TinyPreset = "llava", seed: int = 0):
    """Build ``(model, processor)`` for a tiny preset from config, randomly initialised with ``seed``."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        LlavaProcessor,
        SiglipImageProcessor,
    )

    p = PRESETS[preset] if isinstance(preset, str) else preset
    if p.arch == "idefics3":
        return _build_idefics3(p, seed)
    tokenizer = build_tokenizer(p.vocab_size)
    vocab_size = len(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision, text = _configs(p, vocab_size)
    torch.manual_seed(seed)
    n_patches = (p.image_size // p.patch_size) ** 2
    if p.arch == "llava":
        config = LlavaConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id,
            vision_feature_select_strategy="full", vision_feature_layer=-1, image_seq_length=n_patches,
            projector_hidden_act="gelu", tie_word_embeddings=p.tie_embeddings,
        )
        model = LlavaForConditionalGeneration(config)
        # SigLIP's processor resizes the whole photo (no centre crop), so objects near the edges stay visible.
        image_processor = SiglipImageProcessor(size={"height": p.image_size, "width": p.image_size})
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=p.patch_size,
            vision_feature_select_strategy="full", num_additional_image_tokens=0,
            chat_template=prompts.CHATML_TEMPLATE,
        )
    elif p.arch == "llava-onevision":
        s = p.image_size
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s]]
        config = LlavaOnevisionConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id,
            vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
            vision_aspect_ratio="anyres_max_9", tie_word_embeddings=p.tie_embeddings,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        image_processor = LlavaOnevisionImageProcessor(size={"height": s, "width": s}, image_grid_pinpoints=pinpoints)
        processor = LlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=n_patches,
            video_processor=LlavaOnevisionVideoProcessor(size={"height": s, "width": s}),
            vision_feature_select_strategy="full", chat_template=prompts.CHATML_TEMPLATE,
        )
    else:
        raise ValueError(f"unknown tiny architecture {p.arch!r}")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(prompts.IM_END)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def _build_idefics3(p: TinyPreset, seed: int):
    """A tiny Idefics3ForConditionalGeneration (SmolVLM's classes) with its processor."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    tokenizer = build_tokenizer(p.vocab_size, prompts.SMOLVLM, IDEFICS3_TOKENS)
    scale = int(p.extra.get("scale_factor", 2))
    s = p.image_size
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p.text_hidden, intermediate_size=p.text_intermediate,
        num_hidden_layers=p.text_layers, num_attention_heads=p.text_heads, num_key_value_heads=p.text_kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=p.tie_embeddings, rope_theta=10000.0,
    )
    vision = {"hidden_size": p.vision_hidden, "intermediate_size": p.vision_hidden * 4,
              "num_hidden_layers": p.vision_layers, "num_attention_heads": p.vision_heads,
              "image_size": s, "patch_size": p.patch_size}
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=p.tie_embeddings)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    tiles = int(p.extra.get("max_tiles_side", 2))
    image_processor = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": s * tiles},
                                             max_image_size={"longest_edge": s})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(s // p.patch_size) ** 2 // scale**2, chat_template=prompts.SMOLVLM.template)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(prompts.SMOLVLM.end)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def save_tiny(out_dir: str | Path, preset: str | TinyPreset = "llava", seed: int = 0) -> Path:
    """Build a tiny model and save it (model + processor) as a standard Hugging Face folder."""
    out = Path(out_dir)
    model, processor = build_tiny(preset, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
