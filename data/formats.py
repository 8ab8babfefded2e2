"""Readers and writers for the dataset formats users bring.

- LLaVA / LLaVA-OneVision conversation JSON + image folder:
  [{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}]
  (multi-turn conversations and records without "image" included; an optional "caption" key is kept)
- image-caption pairs as JSONL ({"image", "caption"} per line) or CSV (header with image, caption)
- a folder of images with sidecar captions (photo.jpg + photo.txt)

Every reader yields `Record`s. The `<image>` placeholder is removed from the text: a record has an
image when image_path is set, and the model side inserts its image tokens. Relative image paths
are resolved against image_root (default: the folder of the annotation file). Malformed input
raises DataFormatError naming the file and the line or record index. Readers do not open images:
missing or corrupt images are the streaming dataset's business (skipped and counted).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data.errors import DataFormatError
from data.vocab import DESCRIBE_QUESTION

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"})
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_LLAVA_ROLE = {"user": "human", "assistant": "gpt"}
_IMAGE_TOKEN_RE = re.compile(r"[ \t]*<image>[ \t]*")

FORMATS = ("llava", "jsonl", "csv", "sidecar")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. role is "user" or "assistant"; content has no <image>."""

    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """One training example as read from disk (the image is not opened here).

    source says where it came from: "file[index]" for JSON, "file:line" for JSONL/CSV, the
    caption file for sidecar folders.
    """

    id: str
    image_path: Path | None
    conversation: list[Turn] = field(default_factory=list)
    caption: str | None = None
    source: str = ""

    @property
    def contrastive_caption(self) -> str | None:
        """Text of the contrastive pair: the explicit caption, else the first assistant answer."""
        if self.caption:
            return self.caption
        return next((t.content for t in self.conversation if t.role == "assistant"), None)


def caption_conversation(caption: str) -> list[Turn]:
    """The conversation of a caption-only record: describe instruction -> caption."""
    return [Turn("user", DESCRIBE_QUESTION), Turn("assistant", caption)]


def strip_image_token(text: str) -> str:
    """Text without the <image> placeholder(s): "<image>\nQ" -> "Q", "a <image> b" -> "a b".
    Only lines that held a placeholder are touched; a line left empty is dropped."""
    lines = []
    for line in text.split("\n"):
        if IMAGE_TOKEN in line:
            line = _IMAGE_TOKEN_RE.sub(" ", line).strip()
            if not line:
                continue
        lines.append(line)
    return "\n".join(lines).strip()


def _resolve(image: str, root: Path) -> Path:
    p = Path(image).expanduser()
    return p if p.is_absolute() else root / p


def relative_path(path: Path, root: Path) -> str:
    """path relative to root when it lies under root (POSIX separators), else absolute."""
    try:
        return Path(os.path.relpath(path, root)).as_posix() if Path(path).resolve().is_relative_to(root.resolve()) else str(path)
    except ValueError:  # other drive on Windows
        return str(path)


# ---------------------------------------------------------------------------------------------
# LLaVA JSON
# ---------------------------------------------------------------------------------------------
def _llava_record(item: Any, i: int, path: Path, root: Path) -> Record:
    def bad(msg: str) -> DataFormatError:
        return DataFormatError(path, msg, index=i)

    if not isinstance(item, dict):
        raise bad(f"expected an object, got {type(item).__name__}")
    convs = item.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise bad('missing or empty "conversations" list')

    image = item.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            raise bad(f"{len(image)} images in one record; only single-image records are supported")
        image = image[0]
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise bad(f'"image" must be a non-empty string, got {image!r}')

    turns: list[Turn] = []
    placeholders = 0
    for j, msg in enumerate(convs):
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str) or "from" not in msg:
            raise bad(f'conversations[{j}] must be an object with "from" and a string "value"')
        role = _ROLES.get(msg["from"])
        if role is None:
            raise bad(f"conversations[{j}]: unknown role {msg['from']!r} (expected one of {sorted(_ROLES)})")
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise bad(f"conversations[{j}] is from {msg['from']!r} but turns must alternate human, gpt, human, ...")
        placeholders += msg["value"].count(IMAGE_TOKEN)
        content = strip_image_token(msg["value"])
        if not content and not (role == "user" and IMAGE_TOKEN in msg["value"]):
            raise bad(f"conversations[{j}] has an empty value")
        turns.append(Turn(role, content))
    if turns[-1].role != "assistant":
        raise bad("the conversation must end with a gpt turn")
    if placeholders and image is None:
        raise bad('the conversation has an <image> placeholder but the record has no "image"')
    if placeholders > 1:
        raise bad(f"{placeholders} <image> placeholders for one image")

    cap = item.get("caption")
    if cap is not None and (not isinstance(cap, str) or not cap.strip()):
        raise bad(f'"caption" must be a non-empty string, got {cap!r}')
    rid = item.get("id")
    return Record(
        id=str(rid) if rid is not None else f"{path.stem}-{i}",
        image_path=_resolve(image, root) if image is not None else None,
        conversation=turns,
        caption=cap.strip() if cap else None,
        source=f"{path}[{i}]",
    )


def read_llava(path: str | Path, image_root: str | Path | None = None) -> Iterator[Record]:
    """Records of a LLaVA conversation JSON file; images relative to image_root (default: its folder)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from e
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text: {e}") from e
    if not isinstance(data, list):
        raise DataFormatError(path, f"expected a JSON list of records, got {type(data).__name__}")
    for i, item in enumerate(data):
        yield _llava_record(item, i, path, root)


def llava_item(rec: Record, image_root: Path) -> dict:
    """The LLaVA JSON object of a record (<image> put back in front of the first user turn)."""
    conv = []
    for j, t in enumerate(rec.conversation):
        value = f"{IMAGE_TOKEN}\n{t.content}" if (j == 0 and rec.image_path is not None) else t.content
        conv.append({"from": _LLAVA_ROLE[t.role], "value": value})
    item: dict[str, Any] = {"id": rec.id}
    if rec.image_path is not None:
        item["image"] = relative_path(rec.image_path, image_root)
    if rec.caption:
        item["caption"] = rec.caption
    item["conversations"] = conv
    return item


def write_llava(records: Iterable[Record], path: str | Path, image_root: str | Path | None = None) -> Path:
    """Write records as a LLaVA JSON file (atomically); image paths relative to image_root."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    atomic_write_json(path, [llava_item(r, root) for r in records])
    return path


# ---------------------------------------------------------------------------------------------
# Image-caption pairs: JSONL and CSV
# ---------------------------------------------------------------------------------------------
def _pair_record(row: dict, path: Path, line: int, root: Path, fallback_id: str) -> Record:
    image, cap = row.get("image"), row.get("caption")
    if not isinstance(image, str) or not image.strip():
        raise DataFormatError(path, f'"image" must be a non-empty string, got {image!r}', line=line)
    if not isinstance(cap, str) or not cap.strip():
        raise DataFormatError(path, f'"caption" must be a non-empty string, got {cap!r}', line=line)
    rid = row.get("id")
    return Record(
        id=str(rid) if rid not in (None, "") else fallback_id,
        image_path=_resolve(image.strip(), root),
        conversation=caption_conversation(cap.strip()),
        caption=cap.strip(),
        source=f"{path}:{line}",
    )


def read_jsonl_pairs(path: str | Path, image_root: str | Path | None = None) -> Iterator[Record]:
    """Records of a JSONL file of {"image", "caption"} objects (optional "id"); blank lines skipped."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, f"not UTF-8 text: {e.reason}", line=line_no) from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=line_no) from e
            if not isinstance(row, dict):
                raise DataFormatError(path, f"expected an object, got {type(row).__name__}", line=line_no)
            yield _pair_record(row, path, line_no, root, f"{path.stem}-{line_no}")


def read_csv_pairs(path: str | Path, image_root: str | Path | None = None) -> Iterator[Record]:
    """Records of a CSV file whose header has `image` and `caption` columns (optional `id`)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        # utf-8-sig: spreadsheet exports often start with a BOM.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataFormatError(path, f"not UTF-8 text: {e.reason}", line=line) from e
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("image", "caption") if c not in cols]
        if missing:
            raise DataFormatError(path, f"header lacks column(s) {missing}; found {cols}", line=1)
        for row in reader:
            line = reader.line_num  # last physical line of this row (rows may span lines when quoted)
            if None in row:  # more cells than header columns
                raise DataFormatError(path, f"row has {len(cols) + len(row[None])} cells, header has {len(cols)}", line=line)
            if all(not (v or "").strip() for v in row.values()):
                continue
            yield _pair_record(row, path, line, root, f"{path.stem}-{line}")


def _pair_rows(records: Iterable[Record], root: Path) -> Iterator[dict]:
    for r in records:
        cap = r.contrastive_caption
        if r.image_path is None or not cap:
            raise ValueError(f"record {r.id!r} needs an image and a caption to be written as a pair")
        yield {"id": r.id, "image": relative_path(r.image_path, root), "caption": cap}


def write_jsonl_pairs(records: Iterable[Record], path: str | Path, image_root: str | Path | None = None) -> Path:
    """Write records as {"id", "image", "caption"} JSONL (atomically)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    rows = _pair_rows(records, root)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def write_csv_pairs(records: Iterable[Record], path: str | Path, image_root: str | Path | None = None) -> Path:
    """Write records as an id,image,caption CSV (atomically)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "image", "caption"])
    w.writeheader()
    w.writerows(_pair_rows(records, root))
    atomic_write_text(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# Folder of images with sidecar .txt captions
# ---------------------------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def read_sidecar_folder(folder: str | Path) -> Iterator[Record]:
    """Records of a folder (searched recursively) of images with same-stem .txt captions.

    Images without a caption file are skipped with a warning; an empty or non-UTF-8 caption file
    is a DataFormatError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "not a folder")
    uncaptioned = 0
    for img in sorted(p for p in folder.rglob("*") if _is_image(p)):
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            uncaptioned += 1
            continue
        try:
            cap = txt.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:
            raise DataFormatError(txt, f"caption file is not UTF-8 text: {e}") from e
        if not cap:
            raise DataFormatError(txt, "caption file is empty")
        yield Record(
            id=img.relative_to(folder).with_suffix("").as_posix(),
            image_path=img,
            conversation=caption_conversation(cap),
            caption=cap,
            source=str(txt),
        )
    if uncaptioned:
        log.warning("%s: skipped %d image(s) without a .txt caption file", folder, uncaptioned)


def write_sidecar_folder(records: Iterable[Record], folder: str | Path) -> Path:
    """Copy each record's image to folder/<id><ext> and write folder/<id>.txt with its caption."""
    folder = Path(folder)
    for r in records:
        cap = r.contrastive_caption
        if r.image_path is None or not cap:
            raise ValueError(f"record {r.id!r} needs an image and a caption to be written as a sidecar pair")
        dest = folder / f"{r.id}{r.image_path.suffix.lower()}"
        if dest.resolve() != r.image_path.resolve():
            atomic_write_bytes(dest, r.image_path.read_bytes())
        atomic_write_text(dest.with_suffix(".txt"), cap + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# Autodetection
# ---------------------------------------------------------------------------------------------
LLAVA_DEFAULT_FILE = "llava.json"


def detect_format(path: str | Path) -> str:
    """One of FORMATS for a path: a folder with llava.json or a .json file -> llava; .jsonl; .csv;
    any other folder -> sidecar."""
    path = Path(path)
    if path.is_dir():
        return "llava" if (path / LLAVA_DEFAULT_FILE).is_file() else "sidecar"
    if not path.exists():
        raise DataFormatError(path, "no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "llava"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise DataFormatError(path, f"unknown dataset format {suffix!r}; expected a folder, .json, .jsonl or .csv")


def read_records(path: str | Path, image_root: str | Path | None = None) -> tuple[str, Iterator[Record]]:
    """(format, records) of any supported dataset path (see detect_format)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "llava":
        file = path / LLAVA_DEFAULT_FILE if path.is_dir() else path
        return fmt, read_llava(file, image_root)
    if fmt == "jsonl":
        return fmt, read_jsonl_pairs(path, image_root)
    if fmt == "csv":
        return fmt, read_csv_pairs(path, image_root)
    return fmt, read_sidecar_folder(path)
