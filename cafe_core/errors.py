"""Errors that cafe_core raises on purpose, with messages meant for people."""


class CafeError(Exception):
    """Base class of every error cafe_core raises deliberately."""


class ModelLoadError(CafeError):
    """A checkpoint could not be loaded (missing path, wrong model type, impossible quantization)."""


class InputError(CafeError, ValueError):
    """An input to embed/generate is unusable (empty batch, zero-size or non-RGB image, mismatched lengths)."""
