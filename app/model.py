"""The app's one way to get its model: a loaded CafeModel as is, or one loaded from a name.

PhotoIndex.open, PhotoService and the `ask` command all come through here, so a missing or wrong
model reads the same everywhere, and the shipped demo model is the default.

A name that does not load gives one message, whatever the reason (no such path, a file, a folder
without a model, a checkpoint of another kind, an uncached hub id): the web UI's model box passes
user input here, and different messages would tell a visitor which paths exist on the server.
"""

from __future__ import annotations

import os

from app.config import DTYPES, IMAGE_CROPS, ConfigError, IndexConfig, ModelConfig, resolve_model


class ModelNotLoadable(ConfigError):
    """The model name does not lead to a model that loads (the message is the same for every cause)."""


def not_loadable_message(name) -> str:
    """The one message for a model name that does not load."""
    return (f"{str(name)!r} is not a model that can be loaded here: give a model folder (config.json and weights, "
            "as save_pretrained writes them), a hub id in the local cache, or tiny:<preset>")


def load_model(model=None, device: str = ModelConfig.device, dtype: str = ModelConfig.dtype,
               batch_size: int = IndexConfig.batch_size, image_crops: str = ModelConfig.image_crops):
    """A cafe_core.CafeModel: ``model`` itself when it is one, else loaded from ``model`` (a folder, hub
    id or tiny:<preset>), or the shipped demo model when it is None.

    device/dtype/image_crops: see app.config.ModelConfig. Raises ModelNotLoadable (a ConfigError) when
    the name does not load.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if image_crops not in IMAGE_CROPS:
        raise ConfigError(f"image crops {image_crops!r}: choose one of {', '.join(IMAGE_CROPS)}")
    name = resolve_model(os.fspath(model) if model else None)
    _check_device(device)
    from cafe_core import CafeModel  # torch and transformers load here, not when the CLI starts
    from cafe_core.errors import CafeError

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # app.config.QUIET_ENV; transformers reads it
        from transformers.utils import logging as hf_logging  # at import, which may have come first

        hf_logging.disable_progress_bar()

    try:
        return CafeModel.load(name, device=device, dtype=dtype, batch_size=batch_size, image_crops=image_crops)
    except (CafeError, OSError, ValueError) as e:
        raise ModelNotLoadable(not_loadable_message(name)) from e


def _check_device(device: str) -> None:
    """A clear message for a device this machine does not have (torch would fail with a traceback)."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {device!r}: no such CUDA GPU here; use --device cpu (or auto)")
