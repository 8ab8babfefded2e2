"""What an evaluation runs on: a sample-world album or an image-caption set, and its photos opened lazily."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from data.dataset import open_dataset
from data.errors import DataFormatError
from data.images import load_image
from data.synth import GROUND_TRUTH_FILE, load_ground_truth
from data.world import PhotoSpec

log = logging.getLogger("training.evaluate")


@dataclass
class EvalSet:
    """Images and texts to evaluate. For sample-world albums, photos/specs hold the ground truth
    (aligned with image_paths) and texts are the photos' captions (text i belongs to photo i)."""

    kind: str  # "world" | "pairs"
    root: Path
    image_paths: list[Path]
    texts: list[str]
    text_image: list[int]  # index into image_paths of each text's paired image
    photos: list[dict] = field(default_factory=list)
    specs: list[PhotoSpec] = field(default_factory=list)
    split: str | None = None


def load_eval_set(data_dir: str | Path, max_photos: int | None = None) -> EvalSet:
    """Read DATA_DIR as a sample-world album (when it has ground_truth.json) or an image-caption set."""
    root = Path(data_dir)
    if root.is_file() and root.name == GROUND_TRUTH_FILE:
        root = root.parent
    if (root / GROUND_TRUTH_FILE).is_file():
        return _load_world(root, max_photos)
    return _load_pairs(root, max_photos)


def _load_world(root: Path, max_photos: int | None) -> EvalSet:
    gt_path = root / GROUND_TRUTH_FILE
    try:
        gt = load_ground_truth(root)
        photos = gt["photos"][:max_photos]
        specs = [PhotoSpec.from_dict(p) for p in photos]
        paths = [root / p["image"] for p in photos]
        texts = [p["caption"] for p in photos]
        for p in photos:
            p["qa"], p["pope"]  # noqa: B018 - fail here, with the file name, not mid-evaluation
    except json.JSONDecodeError as e:
        raise DataFormatError(gt_path, f"invalid JSON: {e.msg}", line=e.lineno) from e
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(gt_path, f"not a sample-world ground truth file ({type(e).__name__}: {e})") from e
    if not photos:
        raise DataFormatError(gt_path, "no photos")
    return EvalSet("world", root, paths, texts, list(range(len(photos))), photos, specs, gt.get("split"))


def _load_pairs(root: Path, max_photos: int | None) -> EvalSet:
    ds = open_dataset(root)  # raises DataFormatError on malformed / empty sets
    image_index: dict[Path, int] = {}
    texts: list[str] = []
    text_image: list[int] = []
    for rec in ds.records:
        cap = rec.contrastive_caption
        if rec.image_path is None or not cap:
            continue
        key = rec.image_path.resolve()
        if key not in image_index:
            if max_photos is not None and len(image_index) >= max_photos:
                continue
            image_index[key] = len(image_index)
        texts.append(cap)
        text_image.append(image_index[key])
    if not texts:
        raise DataFormatError(root, "no record has both an image and a caption; nothing to retrieve")
    return EvalSet("pairs", root, list(image_index), texts, text_image)


class PhotoLoader:
    """Opens photos upright and RGB, remembering failures (logged once) and the last photo opened."""

    def __init__(self, paths: Sequence[Path], max_side: int | None):
        self.paths, self.max_side = paths, max_side
        self.failed: set[int] = set()
        self._last: tuple[int, Image.Image] | None = None

    def get(self, i: int) -> Image.Image | None:
        if i in self.failed:
            return None
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        try:
            im = load_image(self.paths[i], self.max_side)
        except Exception as e:  # noqa: BLE001 - one unreadable photo is skipped, not fatal
            log.warning("skipping unusable photo %s: %s: %s", self.paths[i], type(e).__name__, e)
            self.failed.add(i)
            return None
        self._last = (i, im)
        return im
