"""The one factory that turns a name (hub id, local folder, or ``tiny:<preset>``) into ``(model, processor)``.

Every entry point (app, trainer, evaluator, benchmarks) loads models through here, so errors read the
same everywhere: a missing path, a checkpoint that is not image-text-to-text, or a quantization the
machine cannot run all raise :class:`ModelLoadError` with a message meant for a person.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ModelLoadError
from .family import family_for

TINY_PREFIX = "tiny:"
QUANTIZATIONS = (None, "8bit", "4bit")


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/None -> bfloat16 on GPUs that support it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


def _quantization_config(quantization: str | None, compute_dtype: torch.dtype, skip_modules=None):
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization {quantization!r}; use one of 8bit, 4bit (or none)")
    if quantization is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a backend that fails to initialise
        raise ModelLoadError(f"{quantization} loading needs bitsandbytes, which cannot be used here: {e}") from e
    from transformers import BitsAndBytesConfig

    # skip_modules=None keeps transformers' default (lm_head / tied output embeddings stay unquantized).
    skip = list(skip_modules) if skip_modules is not None else None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=skip)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.sep + os.sep in name


def load_model_and_processor(
    name_or_path: str | Path,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    quantization: str | None = None,
    skip_quantization: list[str] | None = None,
    projector_full_precision: bool = False,
):
    """Load any ``AutoModelForImageTextToText`` checkpoint with its ``AutoProcessor``.

    ``name_or_path`` is a Hugging Face hub id, a local folder, or ``tiny:<preset>`` (built from config by
    :mod:`cafe_core.tiny`, random weights). Returns ``(model, processor)`` with the model in eval mode.
    ``skip_quantization``: module names kept in full precision when quantizing (replaces transformers'
    default list, so include ``lm_head``). ``projector_full_precision``: keep the family's projector and
    ``lm_head`` unquantized (QLoRA training trains the projector fully; 4-bit weights take no gradients).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    name = str(name_or_path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    qconfig = _quantization_config(quantization, torch_dtype, skip_quantization)

    if name.startswith(TINY_PREFIX):
        from .tiny import PRESETS, build_tiny

        preset = name[len(TINY_PREFIX):]
        if preset not in PRESETS:
            raise ModelLoadError(f"unknown tiny preset {preset!r}; choose one of {sorted(PRESETS)}")
        if qconfig is not None:
            raise ModelLoadError("quantization applies to saved checkpoints; save the tiny model first (cafe_core.tiny.save_tiny)")
        model, processor = build_tiny(preset)
        return model.to(dev, torch_dtype).eval(), processor

    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a model folder (no config.json); point to a save_pretrained folder")
        source = str(path)
    elif _looks_like_hub_id(name):
        source = name
    else:
        raise ModelLoadError(f"model path {path} does not exist")

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only models already in the local cache can load)" if offline else ""
        raise ModelLoadError(f"could not load a model config from '{name}': not a local folder and not found on the hub{hint}") from e
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise ModelLoadError(
            f"'{name}' is a '{config.model_type}' checkpoint, not an image-text-to-text model; CAFe needs a "
            "vision-language model such as llava-hf/llava-onevision-qwen2-0.5b-si-hf"
        )
    family = family_for(config)  # a clear error for a family CAFe cannot prompt yet, before loading weights
    if quantization and projector_full_precision and skip_quantization is None:
        qconfig = _quantization_config(quantization, torch_dtype, family.full_precision_modules)

    kwargs = {"dtype": torch_dtype}
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": str(dev)})
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except Exception as e:
        if qconfig is not None:
            raise ModelLoadError(f"{quantization} (bitsandbytes) loading of '{name}' failed on {dev.type}: {e}") from e
        raise ModelLoadError(f"could not load model weights from '{name}': {e}") from e
    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as e:
        raise ModelLoadError(f"could not load the processor of '{name}': {e}") from e
    if qconfig is None:
        model = model.to(dev)
    return model.eval(), processor
