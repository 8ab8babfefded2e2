"""The one way an image file becomes the pixels a model sees, at training, indexing and query time.

`to_model_image(image, max_side)` turns any opened PIL image upright (EXIF orientation), into 8-bit
RGB (alpha composited on white, 16-bit and float rescaled, CMYK/palette converted) and no larger than
`max_side`. `load_image(path, max_side)` opens a file and does the same. The trainer, the evaluator
and the photo app (app.photos) all go through here, so a transparent PNG or a 16-bit TIFF looks the
same to the model when it is trained on and when it is indexed.

HEIC/HEIF (phone photos) are readable once `register_openers()` ran; the functions here call it.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = Image.Resampling.BICUBIC  # downscaling filter (PIL's thumbnail default, named so it stays put)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

_registered = False
_register_lock = threading.Lock()


def register_openers() -> None:
    """Register the HEIF opener and silence PIL's bomb warning (callers enforce their own pixel cap). Once."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
            pass
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _registered = True


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit and float rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(image, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        elif mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0  # 16-bit (0..65535) to 8-bit
        gray = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1, P without transparency: PIL knows the conversion.
    return image.convert("RGB")


def to_model_image(image: Image.Image, max_side: int | None = None) -> Image.Image:
    """An opened image, decoded upright and RGB, its longest side at most ``max_side`` (None: as is).

    JPEGs are decoded at reduced scale (libjpeg's 1/2, 1/4, 1/8) when that still leaves ``max_side``:
    much faster for camera-size photos. Raises whatever PIL raises for undecodable pixel data.
    """
    if max_side is not None and image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))
    image.load()
    image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), RESAMPLE)
    return image


def load_image(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Open an image file fully as :func:`to_model_image` returns it. Raises on missing/corrupt files."""
    register_openers()
    with Image.open(path) as im:
        return to_model_image(im, max_side)
