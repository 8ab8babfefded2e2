"""cafe_core: the CAFe model (embed + generate over any HF image-text-to-text model) and the CAFe losses."""

from .errors import CafeError, InputError, ModelLoadError
from .model import CafeModel

__all__ = ["CafeModel", "CafeError", "InputError", "ModelLoadError"]
