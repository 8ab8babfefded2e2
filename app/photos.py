"""The file system side of the photo index: walk photo folders, decode photos, read their metadata.

- `walk_photos(roots)` yields every photo file under the roots (hidden files and folders skipped,
  symlinks followed only when they point inside a root, each real file once).
- `load_photo(path, max_pixels, max_side)` reads one file and returns an upright RGB image scaled
  for embedding plus its metadata, or raises `SkipPhoto` with a short reason code.

Nothing here knows about models or databases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from app.config import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from data.images import register_openers, to_model_image

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
     ".heic", ".heif", ".hif"}
)

# Folders that photo tools (Synology, macOS zip) fill with thumbnails and resource forks.
JUNK_FOLDERS = frozenset({"@eaDir", "__MACOSX"})

# Reason codes for skipped files (stable: they appear in the CLI's JSON).
EMPTY = "empty"                  # zero-byte file
UNREADABLE = "unreadable"        # permission denied or I/O error
NOT_AN_IMAGE = "not-an-image"    # no known image signature (e.g. text renamed to .jpg)
CORRUPT = "corrupt"              # image signature but undecodable data
TRUNCATED = "truncated"          # the file ends before the image data does
TOO_LARGE = "too-large"          # decoded pixels above the cap (decompression bomb)
BAD_FILENAME = "bad-filename"    # a name that is not valid UTF-8 cannot be stored
SKIP_REASONS = (EMPTY, UNREADABLE, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_LARGE, BAD_FILENAME)

# File signatures: a file that starts with one of these but fails to decode is corrupt, not a non-image.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class SkipPhoto(Exception):
    """A file that cannot be indexed; `reason` is one of SKIP_REASONS, `detail` is for humans."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FileEntry:
    """One photo file found by the walk. `path` is absolute, symlinks in it left as the user made them."""

    path: str
    root: str
    size: int
    mtime_ns: int


@dataclass
class PhotoMeta:
    """Metadata stored with each photo's vector.

    `taken` is epoch seconds: EXIF DateTimeOriginal (local time of the machine that indexes, unless the
    file records its UTC offset), falling back to the file's mtime (`date_source` says which).
    `width`/`height` are the upright size of the original, not of the scaled copy.
    """

    path: str
    root: str
    folder: str
    name: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int
    format: str
    taken: float
    date_source: str
    camera_make: str = ""
    camera_model: str = ""
    gps_lat: float | None = None
    gps_lon: float | None = None

    @property
    def camera(self) -> str:
        """Make and model as one readable string ("Canon EOS R5", not "Canon Canon EOS R5")."""
        make, model = self.camera_make, self.camera_model
        if make and model.lower().startswith(make.lower()):
            return model
        return " ".join(part for part in (make, model) if part)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- walk


def is_photo_name(name: str) -> bool:
    """True for a visible file name with an image extension."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def under_any(path: str, roots: Iterable[str]) -> bool:
    """True when ``path`` is one of ``roots`` or inside one (plain string test: resolve symlinks first
    where that matters)."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def walk_photos(roots: Iterable[str | os.PathLike]) -> Iterator[FileEntry]:
    """Yield every photo under `roots`, in a stable order (sorted names, depth first).

    Hidden files and folders (name starting with ".") and thumbnail folders are skipped. A symlink is
    followed only when its target lies inside one of the roots; symlinks are visited after all real
    entries so a file reachable both directly and through a link is reported under its real path,
    and each real file and folder is visited once (no loops). Missing roots raise FileNotFoundError.
    """
    abs_roots = [os.path.abspath(os.fspath(r)) for r in roots]
    for root in abs_roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"photo folder not found: {root}")
    real_roots = [os.path.realpath(r) for r in abs_roots]

    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    # (path, root) of symlinks, followed after every real entry has been seen.
    deferred: list[tuple[str, str, bool]] = []

    def walk_dir(top: str, root: str) -> Iterator[FileEntry]:
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    continue
                seen_dirs.add(key)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue  # unreadable folder: nothing to index in it
            subdirs = []
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir()  # follows links
                except OSError:
                    continue
                if is_dir:
                    if name in JUNK_FOLDERS:
                        continue
                    if is_link:
                        deferred.append((entry.path, root, True))
                    else:
                        subdirs.append(entry.path)
                    continue
                if not is_photo_name(name):
                    continue
                if is_link:
                    deferred.append((entry.path, root, False))
                    continue
                found = _file_entry(entry.path, root, seen_files)
                if found is not None:
                    yield found
            stack.extend(reversed(subdirs))  # pop() then visits them in sorted order

    for root in abs_roots:
        yield from walk_dir(root, root)
    while deferred:
        path, root, is_dir = deferred.pop(0)
        if not under_any(os.path.realpath(path), real_roots):
            continue
        if is_dir:
            yield from walk_dir(path, root)
        else:
            found = _file_entry(path, root, seen_files)
            if found is not None:
                yield found


def _file_entry(path: str, root: str, seen_files: set) -> FileEntry | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # broken link, or the file vanished mid-walk
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino)
    if key in seen_files:
        return None  # same file through a link or a hard link
    seen_files.add(key)
    return FileEntry(path, root, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------- decode


def content_hash(data: bytes) -> str:
    """Hash of a file's bytes: equal for exact copies wherever they live."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class RawPhoto:
    """A photo file read into memory and identified, not yet decoded."""

    data: bytes
    meta: PhotoMeta
    image: Image.Image  # opened lazily by PIL: header parsed, pixels not decoded


def read_photo(path: str | os.PathLike, root: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> RawPhoto:
    """Read a file, hash it and parse its header and EXIF, without decoding pixels.

    Raises SkipPhoto for empty, unreadable, non-image, oversized and (when detectable from the
    header) corrupt files.
    """
    register_openers()
    path = os.path.abspath(os.fspath(path))
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise SkipPhoto(BAD_FILENAME, "file name is not valid UTF-8") from None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # size/mtime of exactly what we read
            data = f.read()
    except OSError as e:
        raise SkipPhoto(UNREADABLE, e.strerror or str(e)) from None
    if not data:
        raise SkipPhoto(EMPTY, "zero-byte file")

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SkipPhoto(TOO_LARGE, str(e)) from None
    except UnidentifiedImageError:
        raise _undecodable(data, "cannot identify image") from None
    except Exception as e:  # PIL plugins raise many types for broken headers
        raise _classify(data, e) from None

    width, height = image.size
    if width * height > max_pixels:
        raise SkipPhoto(TOO_LARGE, f"{width}x{height} pixels is over the cap of {max_pixels}")

    if image.format == "PNG":
        # PNG keeps EXIF in a chunk that may follow the pixels, so getexif() decodes the whole file:
        # decode here, where errors are classified, instead of inside getexif() where they are not.
        try:
            image.load()
        except Exception as e:
            raise _classify(data, e) from None
    try:
        exif = image.getexif()
    except Exception:
        exif = Image.Exif()  # broken EXIF must not cost the photo
    orientation = _int_or(exif.get(0x0112), 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width

    root = os.path.abspath(root) if root else os.path.dirname(path)
    taken, source = _taken(exif, st.st_mtime)
    make, model = _text(exif.get(0x010F)), _text(exif.get(0x0110))
    lat, lon = _gps(exif)
    meta = PhotoMeta(
        path=path,
        root=root,
        folder=os.path.dirname(path),
        name=os.path.basename(path),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        content_hash=content_hash(data),
        width=width,
        height=height,
        format=image.format or "",
        taken=taken,
        date_source=source,
        camera_make=make,
        camera_model=model,
        gps_lat=lat,
        gps_lon=lon,
    )
    return RawPhoto(data=data, meta=meta, image=image)


def decode_photo(raw: RawPhoto, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Decode a RawPhoto into an upright RGB image whose longest side is at most `max_side`
    (data.images.to_model_image: the same pixels the model was trained on).

    Raises SkipPhoto (truncated / corrupt) when the pixel data cannot be decoded.
    """
    try:
        return to_model_image(raw.image, max_side)
    except Exception as e:
        raise _classify(raw.data, e) from None


def load_photo(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE, root: str | None = None
) -> tuple[Image.Image, PhotoMeta]:
    """Read and decode one photo: (upright RGB image, longest side <= max_side; its metadata).

    Raises SkipPhoto with one of SKIP_REASONS when the file cannot be used.
    """
    raw = read_photo(path, root=root, max_pixels=max_pixels)
    return decode_photo(raw, max_side=max_side), raw.meta


def prepare_image(image: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Make an in-memory image (e.g. an upload) ready for the model, exactly as indexing does."""
    return to_model_image(image, max_side)


def _undecodable(data: bytes, detail: str) -> SkipPhoto:
    if _has_image_signature(data):
        return SkipPhoto(CORRUPT, detail)
    return SkipPhoto(NOT_AN_IMAGE, "no image data recognised")


def _classify(data: bytes, error: Exception) -> SkipPhoto:
    message = str(error) or type(error).__name__
    if isinstance(error, Image.DecompressionBombError):
        return SkipPhoto(TOO_LARGE, message)
    if "truncat" in message.lower():
        return SkipPhoto(TRUNCATED, message)
    return _undecodable(data, message)


def _has_image_signature(data: bytes) -> bool:
    head = data[:16]
    if head.startswith(_SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp"  # HEIF/HEIC/AVIF container


# --------------------------------------------------------------------------------------------- EXIF


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    return value.replace("\x00", "").strip()


def _taken(exif: Image.Exif, mtime: float) -> tuple[float, str]:
    """(epoch seconds, "exif" | "mtime") for when the photo was taken."""
    try:
        sub = exif.get_ifd(0x8769)  # Exif sub-IFD holds DateTimeOriginal
    except Exception:
        sub = {}
    raw = _text(sub.get(0x9003)) or _text(exif.get(0x0132))  # DateTimeOriginal, then DateTime
    offset = _text(sub.get(0x9011))  # OffsetTimeOriginal, e.g. "+02:00"
    if raw:
        try:
            when = dt.datetime.strptime(raw[:19], "%Y:%m:%d %H:%M:%S")
            if offset:
                try:
                    when = when.replace(tzinfo=dt.datetime.strptime(offset, "%z").tzinfo)
                except ValueError:
                    pass
            # Naive times are read as local time, like the --after/--before dates on the command line.
            return when.timestamp(), "exif"
        except (ValueError, OverflowError, OSError):
            pass  # "0000:00:00 00:00:00" and other placeholders
    return float(mtime), "mtime"


def _gps(exif: Image.Exif) -> tuple[float | None, float | None]:
    try:
        gps = exif.get_ifd(0x8825)
    except Exception:
        return None, None
    try:
        lat = _dms(gps[2], gps.get(1, "N"), "S")
        lon = _dms(gps[4], gps.get(3, "E"), "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None, None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    return lat, lon


def _dms(value, ref, negative_ref: str) -> float:
    degrees, minutes, seconds = (float(v) for v in value)
    sign = -1.0 if _text(ref).upper() == negative_ref else 1.0
    return sign * (degrees + minutes / 60.0 + seconds / 3600.0)


def folder_chain(folder: str, root: str) -> list[str]:
    """The folder and its ancestors up to and including the root, for "in this folder" filters."""
    chain = []
    current = folder
    root = root.rstrip(os.sep) or os.sep
    while True:
        chain.append(current)
        if current == root or len(current) <= len(root):
            break
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return chain


def photo_path(p: str | os.PathLike) -> str:
    """Absolute path as stored in the index."""
    return os.path.abspath(os.fspath(Path(p).expanduser()))
