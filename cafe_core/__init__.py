"""cafe_core: the CAFe model (embed + generate over any HF image-text-to-text model) and the CAFe losses."""

from .errors import CafeError, InputError, ModelLoadError

__all__ = ["CafeModel", "CafeError", "InputError", "ModelLoadError"]


def __getattr__(name: str):
    # CafeModel brings torch and transformers (seconds of imports): load it when it is asked for, so that
    # light submodules (prompts, errors, pooling) can be imported by a process that never needs the model.
    if name == "CafeModel":
        from .model import CafeModel

        return CafeModel
    raise AttributeError(f"module 'cafe_core' has no attribute {name!r}")
