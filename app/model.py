"""The app's one way to get its model: a loaded CafeModel as is, or one loaded from a name.

PhotoIndex.open, PhotoService and the `ask` command all come through here, so a missing or wrong
model reads the same everywhere, and the shipped demo model is the default.
"""

from __future__ import annotations

import os

from app.config import IndexConfig, resolve_model


def load_model(model=None, device: str = "auto", dtype: str = "auto", batch_size: int = IndexConfig.batch_size):
    """A cafe_core.CafeModel: ``model`` itself when it is one, else loaded from ``model`` (a folder, hub
    id or tiny:<preset>), or the shipped demo model when it is None."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    from cafe_core import CafeModel  # torch and transformers load here, not when the CLI starts

    return CafeModel.load(resolve_model(os.fspath(model) if model else None), device=device, dtype=dtype,
                          batch_size=batch_size)
