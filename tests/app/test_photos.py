"""app.photos: walking folders, decoding every format and mode, EXIF, and typed skip reasons (no model)."""

from __future__ import annotations

import datetime as dt
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import photos
from app.photos import SkipPhoto, folder_chain, load_photo, walk_photos
from data.images import register_openers


def solid(color=(200, 40, 40), size=(60, 40), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def write(path: Path, image: Image.Image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kw)
    return path


def pattern(size=(48, 32)) -> Image.Image:
    """An asymmetric image, so every rotation and flip gives different pixels."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[: h // 3, : w // 4, 2] = 255
    return Image.fromarray(arr)


# --------------------------------------------------------------------------------------------- walk


def rel(entries, root: Path) -> list[str]:
    return [os.path.relpath(e.path, root) for e in entries]


def test_walk_finds_photos_skips_hidden_junk_and_other_files(tmp_path):
    root = tmp_path / "lib"
    for name in ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tif", "h.tiff", "i.heic", "j.HEIF",
                 "sub/k.jpg", "sub/deeper/l.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    for name in [".hidden.jpg", ".trip/m.jpg", "sub/.cache/n.jpg", "@eaDir/o.jpg", "notes.txt", "raw.cr2", "p.jpg.xmp"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    found = list(walk_photos([root]))
    assert rel(found, root) == [
        "a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tif", "h.tiff", "i.heic", "j.HEIF",
        "sub/k.jpg", "sub/deeper/l.png",
    ]
    assert all(e.root == str(root) and os.path.isabs(e.path) and e.size == 1 for e in found)
    assert list(walk_photos([root])) == found  # stable order


def test_walk_follows_symlinks_only_inside_roots_without_loops_or_duplicates(tmp_path):
    root, outside = tmp_path / "lib", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "z.jpg").write_bytes(b"z")
    outside.mkdir()
    (outside / "y.jpg").write_bytes(b"y")
    os.symlink(root / "a", root / "alias_of_a")            # same folder twice: reported once, real path
    os.symlink(root, root / "a" / "loop")                  # a loop back to the root
    os.symlink(outside, root / "out")                      # folder outside the root: not followed
    os.symlink(outside / "y.jpg", root / "ext.jpg")        # file outside the root: not followed
    os.symlink(root / "a" / "x.jpg", root / "b_link.jpg")  # second name for x.jpg: dropped
    os.symlink(root / ".hidden" / "z.jpg", root / "z_link.jpg")  # inside the root, only reachable via the link
    os.symlink(root / "missing.jpg", root / "broken.jpg")
    assert rel(walk_photos([root]), root) == ["a/x.jpg", "z_link.jpg"]


def test_walk_several_roots_and_missing_root(tmp_path):
    for name in ["one/a.jpg", "two/b.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list(walk_photos([tmp_path / "one", tmp_path / "two", tmp_path / "one"]))
    assert [(os.path.basename(e.path), os.path.basename(e.root)) for e in found] == [("a.jpg", "one"), ("b.jpg", "two")]
    with pytest.raises(FileNotFoundError, match="photo folder not found"):
        list(walk_photos([tmp_path / "nope"]))


# --------------------------------------------------------------------------------------------- formats and modes


@pytest.mark.parametrize("suffix,fmt", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP"),
                                        ("tif", "TIFF"), ("heic", None)])
def test_formats_decode_to_rgb(tmp_path, suffix, fmt):
    register_openers()  # HEIF writer
    path = write(tmp_path / f"p.{suffix}", solid((200, 40, 40), (64, 48)), fmt)
    image, meta = load_photo(path)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.abs(np.asarray(image, np.int16) - np.array([200, 40, 40])).max() <= 6
    assert (meta.width, meta.height) == (64, 48) and meta.path == str(path)


def test_gif_uses_first_frame(tmp_path):
    frames = [solid((255, 0, 0), mode="RGB").convert("P"), solid((0, 0, 255), mode="RGB").convert("P")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, meta = load_photo(path)
    assert image.getpixel((5, 5)) == (255, 0, 0) and meta.format == "GIF"


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: solid((0, 255, 255, 0), mode="CMYK"), (255, 0, 0)),
        (lambda: solid((10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 200, 30)),
        (lambda: solid(128, mode="L"), (128, 128, 128)),
        (lambda: solid(1, mode="1"), (255, 255, 255)),
        (lambda: solid((10, 200, 30, 0), mode="RGBA"), (255, 255, 255)),    # transparent -> white
        (lambda: solid((10, 200, 30, 255), mode="RGBA"), (10, 200, 30)),    # opaque keeps its color
        (lambda: solid((50, 0), mode="LA"), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((40, 60), 65535, np.uint16)), (255, 255, 255)),  # 16-bit white
        (lambda: Image.fromarray(np.full((40, 60), 32896, np.uint16)), (128, 128, 128)),  # 16-bit mid gray
    ],
    ids=["cmyk", "palette", "gray", "1bit", "rgba-clear", "rgba-opaque", "la-clear", "16bit-white", "16bit-mid"],
)
def test_modes_convert_to_rgb(tmp_path, make, expected):
    src = make()
    fmt, suffix = ("TIFF", "tif") if src.mode in ("CMYK",) else ("PNG", "png")
    path = write(tmp_path / f"m.{suffix}", src, fmt)
    image, _ = load_photo(path)
    assert image.mode == "RGB"
    assert image.getpixel((3, 3)) == pytest.approx(expected, abs=1)


def test_palette_with_transparency(tmp_path):
    src = solid((10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    index = src.getpixel((0, 0))
    path = tmp_path / "t.png"
    src.save(path, transparency=index)
    image, _ = load_photo(path)
    assert image.getpixel((3, 3)) == (255, 255, 255)


# Inverse of exif_transpose for each Orientation: how a camera stores an upright picture.
STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_gives_the_upright_pixels(tmp_path, orientation):
    upright = pattern((48, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path / "r.png", upright.transpose(STORE[orientation]), "PNG", exif=exif)
    image, meta = load_photo(path)
    assert np.array_equal(np.asarray(image), np.asarray(upright))
    assert (meta.width, meta.height) == (48, 32)
    # Without the tag the stored pixels differ: the test can fail.
    plain = write(tmp_path / "plain.png", upright.transpose(STORE[orientation]), "PNG")
    assert not np.array_equal(np.asarray(load_photo(plain)[0]), np.asarray(upright))


def test_downscale_keeps_aspect_and_jpeg_draft(tmp_path):
    path = write(tmp_path / "big.jpg", pattern((2000, 1000)), "JPEG", quality=90)
    image, meta = load_photo(path, max_side=256)
    assert image.size == (256, 128) and (meta.width, meta.height) == (2000, 1000)
    small = write(tmp_path / "small.png", pattern((100, 50)), "PNG")
    assert load_photo(small, max_side=256)[0].size == (100, 50)  # never upscaled


# --------------------------------------------------------------------------------------------- metadata


def exif_jpeg(path: Path, date: str | None = "2021:06:15 14:30:00", offset: str | None = None, gps=True) -> Path:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    if date:
        exif.get_ifd(0x8769)[0x9003] = date
    if offset:
        exif.get_ifd(0x8769)[0x9011] = offset
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = "S", (33.0, 51.0, 54.0), "W", (151.0, 12.0, 36.0)
    return write(path, solid(), "JPEG", exif=exif)


def test_metadata_from_exif(tmp_path):
    path = exif_jpeg(tmp_path / "sub" / "e.jpg")
    data = path.read_bytes()
    _, meta = load_photo(path, root=str(tmp_path))
    assert meta.taken == dt.datetime(2021, 6, 15, 14, 30).timestamp() and meta.date_source == "exif"
    assert (meta.camera_make, meta.camera_model, meta.camera) == ("Canon", "Canon EOS R5", "Canon EOS R5")
    assert meta.gps_lat == pytest.approx(-33.865) and meta.gps_lon == pytest.approx(-151.21)
    assert meta.root == str(tmp_path) and meta.folder == str(tmp_path / "sub") and meta.name == "e.jpg"
    assert meta.size == len(data) and meta.mtime_ns == path.stat().st_mtime_ns
    assert meta.content_hash == photos.content_hash(data) and meta.format == "JPEG"


def test_metadata_offset_and_fallbacks(tmp_path):
    _, meta = load_photo(exif_jpeg(tmp_path / "o.jpg", offset="+02:00"))
    assert meta.taken == dt.datetime(2021, 6, 15, 12, 30, tzinfo=dt.timezone.utc).timestamp()
    for name, date in [("none.jpg", None), ("zero.jpg", "0000:00:00 00:00:00")]:
        path = exif_jpeg(tmp_path / name, date=date, gps=False)
        os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
        _, meta = load_photo(path)
        assert meta.date_source == "mtime" and meta.taken == pytest.approx(1_600_000_000.123456789)
        assert meta.gps_lat is None and meta.gps_lon is None


def test_copies_share_content_hash(tmp_path):
    a = write(tmp_path / "a.jpg", pattern(), "JPEG")
    b = tmp_path / "b.jpg"
    b.write_bytes(a.read_bytes())
    c = write(tmp_path / "c.jpg", pattern(), "JPEG", quality=50)
    ha, hb, hc = (load_photo(p)[1].content_hash for p in (a, b, c))
    assert ha == hb != hc


def test_folder_chain():
    assert folder_chain("/p/a/b", "/p") == ["/p/a/b", "/p/a", "/p"]
    assert folder_chain("/p", "/p") == ["/p"]


# --------------------------------------------------------------------------------------------- skips


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb needs no more to be refused)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    pattern((200, 120)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes() -> bytes:
    buf = io.BytesIO()
    pattern((200, 120)).save(buf, "PNG")
    return buf.getvalue()


def corrupt_jpeg_header() -> bytes:
    data = bytearray(jpeg_bytes())
    data[3:80] = b"\x00" * 77
    return bytes(data)


def corrupt_png_data() -> bytes:
    data = bytearray(png_bytes())
    start = data.index(b"IDAT") + 20
    data[start : start + 40] = b"\x13" * 40
    return bytes(data)


BAD_FILES = {
    "empty.jpg": (b"", photos.EMPTY),
    "text.jpg": (b"this is a shopping list, not a photo\n", photos.NOT_AN_IMAGE),
    "truncated.jpg": (jpeg_bytes()[:600], photos.TRUNCATED),
    "truncated.png": (png_bytes()[:-200], photos.TRUNCATED),
    "corrupt.jpg": (corrupt_jpeg_header(), photos.CORRUPT),
    "corrupt.png": (corrupt_png_data(), photos.CORRUPT),
    "bomb.png": (png_header_only(40_000, 40_000), photos.TOO_LARGE),  # PIL's own bomb guard fires
    "big.png": (png_header_only(5_000, 5_000), photos.TOO_LARGE),     # over our cap of 20 MP below
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_typed_skip(tmp_path, name):
    data, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SkipPhoto) as info:
        load_photo(path, max_pixels=20_000_000)
    assert info.value.reason == reason, info.value.detail


def test_unreadable_path_is_a_typed_skip(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(SkipPhoto) as info:
        load_photo(tmp_path / "folder.jpg")
    assert info.value.reason == photos.UNREADABLE
