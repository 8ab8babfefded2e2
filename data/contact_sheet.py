"""A PNG grid of sample-world photos with their captions, for the README and for eyeballing."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from data.atomic import atomic_write_bytes
from data.images import to_model_image
from data.world import captions, encode_photo, sample_photo_specs

THUMB = 240  # thumbnail box, px
PAD = 8
FONT_SIZE = 13
TEXT_LINES = 4


def _wrap(text: str, font: ImageFont.ImageFont, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def make_contact_sheet(n: int = 12, seed: int = 7, split: str = "train", cols: int = 4, style: str = "plain") -> Image.Image:
    """Grid of n photos of (seed, split), each decoded from its JPEG the way a viewer would
    (EXIF orientation applied) and labelled with its id and canonical caption."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    specs = sample_photo_specs(n, seed, split, style=style)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    font = ImageFont.load_default(size=FONT_SIZE)
    line_h = FONT_SIZE + 3
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + 2 * PAD + line_h * (TEXT_LINES + 1)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, spec in enumerate(specs):
        x0, y0 = (i % cols) * cell_w + PAD, (i // cols) * cell_h + PAD
        # Decode the real JPEG so the sheet also shows that EXIF-rotated photos come out upright.
        photo = to_model_image(Image.open(io.BytesIO(encode_photo(spec))))  # as the model sees it
        photo.thumbnail((THUMB, THUMB))
        sheet.paste(photo, (x0 + (THUMB - photo.width) // 2, y0 + (THUMB - photo.height) // 2))
        label = spec.id + (f"  (stored rotated, EXIF {spec.orientation})" if spec.orientation != 1 else "")
        draw.text((x0, y0 + THUMB + 2), label, fill=(110, 110, 110), font=font)
        lines = _wrap(captions(spec)[0], font, THUMB, draw)
        if len(lines) > TEXT_LINES:
            lines = lines[: TEXT_LINES - 1] + [lines[TEXT_LINES - 1] + " ..."]
        for j, line in enumerate(lines):
            draw.text((x0, y0 + THUMB + 2 + line_h * (j + 1)), line, fill=(0, 0, 0), font=font)
    return sheet


def write_contact_sheet(path: str | Path, n: int = 12, seed: int = 7, split: str = "train", style: str = "plain") -> Path:
    """Render the contact sheet and write it to path as PNG (atomically)."""
    buf = io.BytesIO()
    make_contact_sheet(n, seed, split, style=style).save(buf, "PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
