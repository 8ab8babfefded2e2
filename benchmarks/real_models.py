"""Real checkpoint architectures built from their configs with random weights (nothing is downloaded).

A *spec* is a JSON file under ``benchmarks/configs/`` (or any path): the checkpoint's model config as
published (``"model"``: what ``AutoConfig.for_model`` takes), its processor's image settings
(``"processor"``) and its chat format (``"chat"``: chatml | smolvlm). A plain Hugging Face
``config.json`` also works: its processor then gets the family's class defaults.

The tokenizer is cafe_core.tiny's locally trained byte-level BPE with the family's special tokens (the
model's vocabulary may be larger than the tokenizer's: the extra embedding rows are never read, but are
computed by the LM head exactly as in the real checkpoint). Processors are the real classes with the real
image settings, so image token counts are the checkpoint's.

    spec = load_spec("llava-onevision-0.5b-si")          # a name under benchmarks/configs/, or a path
    model, processor = build_model(spec, layers=2)       # same widths, 2 vision + 2 text layers
    save_model(model, processor, "/tmp/ov-2l")           # a folder CafeModel.load / the app / the trainer read
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
NAMES = {
    "llava-onevision-0.5b-si": "llava-onevision-0.5b-si.json",
    "smolvlm-256m-instruct": "smolvlm-256m-instruct.json",
}


def load_spec(name_or_path: str | Path) -> dict:
    """A spec by short name (see NAMES) or JSON path; a bare HF config.json is wrapped as ``{"model": ...}``."""
    name = str(name_or_path)
    path = CONFIG_DIR / NAMES[name] if name in NAMES else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no model spec {name!r}: use one of {sorted(NAMES)} or a JSON file path")
    data = json.loads(path.read_text())
    if "model" not in data:  # a checkpoint's own config.json
        data = {"name": path.stem, "model": data, "processor": {}, "chat": None}
    data.setdefault("name", path.stem)
    data.setdefault("processor", {})
    return data


def with_layers(model_cfg: dict, layers: int | None) -> dict:
    """The model config with ``layers`` encoder and decoder layers (widths unchanged); None: as published."""
    cfg = copy.deepcopy(model_cfg)
    if layers:
        for key in ("vision_config", "text_config"):
            cfg.setdefault(key, {})["num_hidden_layers"] = int(layers)
    return cfg


def _tokenizer(model_type: str, chat_name: str | None):
    from cafe_core import prompts
    from cafe_core.tiny import IDEFICS3_TOKENS, build_tokenizer

    if model_type in ("idefics3", "smolvlm"):
        return build_tokenizer(800, prompts.SMOLVLM, IDEFICS3_TOKENS)
    chat = prompts.SMOLVLM if chat_name == "smolvlm" else prompts.CHATML
    return build_tokenizer(800, chat)


def _processor(model_type: str, settings: dict, tokenizer, config):
    """The family's real processor class with the spec's image settings."""
    from cafe_core import prompts

    settings = dict(settings)
    settings.pop("class", None)
    image_kwargs = settings.pop("image_processor", {})
    if model_type == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

        image_kwargs.setdefault("image_grid_pinpoints", config.image_grid_pinpoints)
        vision = config.vision_config
        image_kwargs.setdefault("size", {"height": vision.image_size, "width": vision.image_size})
        for key in ("image_mean", "image_std"):  # SigLIP towers normalise to [-1, 1]
            image_kwargs.setdefault(key, [0.5, 0.5, 0.5])
        settings.setdefault("num_image_tokens", (vision.image_size // vision.patch_size) ** 2)
        settings.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(**image_kwargs), tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(size=image_kwargs["size"]), chat_template=prompts.CHATML_TEMPLATE,
            **settings)
    if model_type in ("idefics3", "smolvlm"):
        from transformers import Idefics3ImageProcessor, Idefics3Processor

        vision = config.vision_config
        image_kwargs.setdefault("max_image_size", {"longest_edge": vision.image_size})
        image_kwargs.setdefault("size", {"longest_edge": 4 * vision.image_size})  # the class's 4-crops-a-side default
        settings.setdefault("image_seq_len", (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2)
        return Idefics3Processor(image_processor=Idefics3ImageProcessor(**image_kwargs), tokenizer=tokenizer,
                                 chat_template=prompts.SMOLVLM.template, **settings)
    if model_type == "llava":
        from transformers import LlavaProcessor, SiglipImageProcessor

        vision = config.vision_config
        image_kwargs.setdefault("size", {"height": vision.image_size, "width": vision.image_size})
        settings.setdefault("patch_size", vision.patch_size)
        settings.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        settings.setdefault("num_additional_image_tokens", 0)
        return LlavaProcessor(image_processor=SiglipImageProcessor(**image_kwargs), tokenizer=tokenizer,
                              chat_template=prompts.CHATML_TEMPLATE, **settings)
    raise ValueError(f"no processor recipe for model_type {model_type!r} (llava_onevision, idefics3, llava)")


def build_config(spec: dict, layers: int | None = None, tokenizer=None):
    """The transformers config of ``spec`` (``layers`` deep), with the tokenizer's image token id."""
    from transformers import AutoConfig

    model_cfg = with_layers(spec["model"], layers)
    model_type = model_cfg["model_type"]
    tokenizer = tokenizer or _tokenizer(model_type, spec.get("chat"))
    dropped = ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")
    model_cfg = {k: v for k, v in model_cfg.items() if k not in dropped}
    model_cfg["image_token_id"] = tokenizer.convert_tokens_to_ids("<image>")
    for key in ("image_token_index", "video_token_index"):
        model_cfg.pop(key, None)
    if model_type == "llava_onevision":
        model_cfg["video_token_id"] = tokenizer.convert_tokens_to_ids("<video>")
    text_vocab = model_cfg.get("text_config", {}).get("vocab_size", 0)
    if text_vocab and text_vocab < len(tokenizer):
        raise ValueError(f"the model's vocabulary ({text_vocab}) is smaller than the tokenizer's ({len(tokenizer)})")
    return AutoConfig.for_model(model_type, **model_cfg), tokenizer


def build_model(spec: dict, layers: int | None = None, seed: int = 0, dtype=None):
    """``(model, processor)``: the spec's architecture with random weights (``layers``: reduced depth)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from cafe_core import prompts

    config, tokenizer = build_config(spec, layers)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype or torch.float32)
    processor = _processor(config.model_type, spec.get("processor", {}), tokenizer, config)
    chat = prompts.SMOLVLM if config.model_type in ("idefics3", "smolvlm") else prompts.CHATML
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(chat.end)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def save_model(model, processor, folder: str | Path) -> Path:
    """A standard Hugging Face folder (model + processor) that ``CafeModel.load`` and the app read."""
    out = Path(folder)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
