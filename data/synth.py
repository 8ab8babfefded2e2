"""Write a sample-world album to disk: photos, LLaVA conversations, ground truth, caption pairs.

Layout of OUT_DIR:
    photos/<id>.jpg      the JPEGs (some stored rotated with an EXIF Orientation tag)
    llava.json           one LLaVA conversation record per photo (the training format)
    captions.jsonl       {"id", "image", "caption"} lines (image-caption pairs)
    ground_truth.json    everything true about each photo + album-level questions (for evaluators)

Every file is written atomically: photos first, then the JSON files (ground_truth.json last), then
stale photos of an earlier run are removed. An interrupted run never leaves JSON pointing at
missing photos, and rerunning into the same folder is safe.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from data.atomic import atomic_write_json, atomic_write_text
from data.vocab import DESCRIBE_QUESTION, SPLITS
from data.world import (
    DEFAULT_SHORT_SIDE,
    QA,
    AlbumQA,
    PhotoSpec,
    Probe,
    album_questions,
    caption,
    captions,
    layout,
    object_counts,
    pope_probes,
    questions,
    sample_photo_specs,
    save_photo,
)

GROUND_TRUTH_VERSION = 1
PHOTOS_DIR = "photos"
LLAVA_FILE = "llava.json"
GROUND_TRUTH_FILE = "ground_truth.json"
CAPTIONS_FILE = "captions.jsonl"
_GENERATED_NAME = re.compile(rf"^({'|'.join(SPLITS)})-(?:[a-z]+-)?\d+-\d{{5}}\.jpg$")


@dataclass(frozen=True)
class SynthResult:
    """What write_album wrote."""

    out_dir: Path
    n_photos: int
    n_qa: int
    n_probes: int
    n_album_questions: int
    n_removed_stale: int


def image_relpath(spec: PhotoSpec) -> str:
    """Path of spec's JPEG relative to the album folder (as written in the JSON files)."""
    return f"{PHOTOS_DIR}/{spec.id}.jpg"


def _annotation_rng(spec: PhotoSpec) -> random.Random:
    # Per photo, so a photo's caption and probes do not depend on how many photos were drawn.
    return random.Random(f"cafe-world:annotate:{spec.id}")


def ground_truth_record(spec: PhotoSpec, popular_counts) -> dict:
    """The ground-truth JSON record of one photo: spec, object boxes, captions, QA and POPE probes."""
    rng = _annotation_rng(spec)
    rec = spec.to_dict()
    rec["image"] = image_relpath(spec)
    for obj, lay in zip(rec["objects"], layout(spec)):
        obj["box"] = list(lay.box)  # upright pixel box (left, top, right, bottom)
    rec["captions"] = captions(spec)
    rec["caption"] = caption(spec, rng)
    rec["qa"] = [asdict(q) for q in questions(spec)]
    rec["pope"] = [asdict(p) for p in pope_probes(spec, rng, popular_counts)]
    return rec


def llava_record(gt: dict) -> dict:
    """The LLaVA conversation record of a photo, built from its ground-truth record: first the
    describe turn (with <image>) answered by the photo's caption, then every other QA pair."""
    conv = [
        {"from": "human", "value": f"<image>\n{DESCRIBE_QUESTION}"},
        {"from": "gpt", "value": gt["caption"]},
    ]
    for qa in gt["qa"]:
        if qa["qtype"] == "describe":  # already the first turn
            continue
        conv.append({"from": "human", "value": qa["question"]})
        conv.append({"from": "gpt", "value": qa["answer"]})
    return {"id": gt["id"], "image": gt["image"], "caption": gt["caption"], "conversations": conv}


def _remove_stale(photos_dir: Path, keep: set[str]) -> int:
    """Delete generated JPEGs of an earlier run that this run did not write, and temp leftovers."""
    removed = 0
    for p in photos_dir.iterdir():
        stale = _GENERATED_NAME.match(p.name) and p.name not in keep
        leftover = p.name.startswith(".") and p.name.endswith(".tmp")
        if p.is_file() and (stale or leftover):
            p.unlink()
            removed += 1
    return removed


def write_album(
    out_dir: str | Path,
    n: int,
    seed: int,
    split: str = "train",
    short_side: int = DEFAULT_SHORT_SIDE,
    style: str = "plain",
) -> SynthResult:
    """Generate n photos of (seed, split, style) into out_dir with all annotation files; see module doc."""
    out = Path(out_dir)
    specs = sample_photo_specs(n, seed, split, short_side, style)
    photos_dir = out / PHOTOS_DIR
    photos_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        save_photo(spec, out / image_relpath(spec))

    popular = object_counts(specs)
    gts = [ground_truth_record(s, popular) for s in specs]
    album_key = f"{seed}:{split}" if style == "plain" else f"{style}:{seed}:{split}"
    album_rng = random.Random(f"cafe-world:album:{album_key}")
    album = album_questions(specs, album_rng)
    ground_truth = {
        "version": GROUND_TRUTH_VERSION,
        "seed": seed,
        "split": split,
        "short_side": short_side,
        "style": style,
        # Sorted list of [color, shape, count]: the statistic behind the "popular" POPE negatives.
        "popular_counts": [[c, s, k] for (c, s), k in sorted(popular.items())],
        "photos": gts,
        "album_questions": [
            {**asdict(q), "photo_ids": list(q.photo_ids), "refers_to": [list(r) for r in q.refers_to]} for q in album
        ],
    }
    atomic_write_json(out / LLAVA_FILE, [llava_record(g) for g in gts])
    atomic_write_text(
        out / CAPTIONS_FILE,
        "".join(json.dumps({"id": g["id"], "image": g["image"], "caption": g["caption"]}, ensure_ascii=False) + "\n" for g in gts),
    )
    # Last: ground_truth.json present means the album is complete.
    atomic_write_json(out / GROUND_TRUTH_FILE, ground_truth)
    # After the JSON files, so no JSON on disk ever points at a deleted photo.
    removed = _remove_stale(photos_dir, {Path(image_relpath(s)).name for s in specs})
    return SynthResult(
        out_dir=out,
        n_photos=len(specs),
        n_qa=sum(len(g["qa"]) for g in gts),
        n_probes=sum(len(g["pope"]) for g in gts),
        n_album_questions=len(album),
        n_removed_stale=removed,
    )


def load_ground_truth(album_dir: str | Path) -> dict:
    """Read OUT_DIR/ground_truth.json."""
    with open(Path(album_dir) / GROUND_TRUTH_FILE, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------- reading back
@dataclass(frozen=True)
class AlbumPhoto:
    """One photo of a synth album as typed records: its spec and everything said about it."""

    spec: PhotoSpec
    image: str  # path relative to the album folder
    captions: tuple[str, ...]
    caption: str  # the paraphrase written to llava.json / captions.jsonl
    qa: tuple[QA, ...]
    pope: tuple[Probe, ...]


@dataclass(frozen=True)
class Album:
    """A synth album read back (see read_album)."""

    root: Path
    split: str
    style: str
    photos: tuple[AlbumPhoto, ...]
    questions: tuple[AlbumQA, ...]

    def image_path(self, photo: AlbumPhoto) -> Path:
        return self.root / photo.image

    def by_id(self) -> dict[str, AlbumPhoto]:
        return {p.spec.id: p for p in self.photos}


def read_album(album_dir: str | Path) -> Album:
    """The album in OUT_DIR as typed records (ground_truth.json parsed once, here)."""
    root = Path(album_dir)
    gt = load_ground_truth(root)
    photos = tuple(
        AlbumPhoto(
            spec=PhotoSpec.from_dict(p),
            image=p["image"],
            captions=tuple(p["captions"]),
            caption=p["caption"],
            qa=tuple(QA(**q) for q in p["qa"]),
            pope=tuple(Probe(**r) for r in p.get("pope", [])),
        )
        for p in gt["photos"]
    )
    questions = tuple(
        AlbumQA(q["question"], q["answer"], tuple(q["photo_ids"]), q.get("qtype", ""),
                tuple(tuple(r) for r in q.get("refers_to", [])))
        for q in gt.get("album_questions", [])
    )
    return Album(root, gt.get("split", "train"), gt.get("style", "plain"), photos, questions)
