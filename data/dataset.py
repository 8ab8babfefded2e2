"""Streaming training samples for the CAFe forward: image + conversation (LM loss) + caption
(contrastive pair).

`open_dataset(path)` reads the small record list of any supported format (see data.formats);
`CafeDataset` then streams: each image is opened only when its sample is yielded, upright
(EXIF orientation applied) and RGB. Order and sharding:

    order = permutation(seed, epoch) of all records (identity when shuffle() was not called)
    order = order[start:]                       # skip(n): resume inside an epoch
    shard k of K = ranks * dataloader workers    # rank r, worker w -> k = r * workers + w
    this shard reads order[k::K]

so every record is read exactly once per epoch across all ranks and workers. Records whose image
is missing or corrupt are skipped, counted (`skipped`) and logged; training does not crash.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from data.errors import DataFormatError
from data.formats import Record, Turn, read_records
from data.images import load_image

log = logging.getLogger(__name__)

MAX_SKIP_WARNINGS = 10  # per pass; beyond this only the end-of-pass summary is logged


@dataclass
class CafeSample:
    """What one training step needs from one record."""

    id: str
    image: Image.Image | None  # upright RGB, or None for text-only records
    conversation: list[Turn]  # for the LM loss; no <image> placeholder in the text
    caption: str | None  # text side of the contrastive pair


def collate_samples(batch: list[CafeSample]) -> list[CafeSample]:
    """DataLoader collate_fn that keeps samples as a list (PIL images do not stack)."""
    return batch


class CafeDataset(IterableDataset):
    """A torch IterableDataset streaming CafeSamples from a list of Records (see module doc)."""

    def __init__(self, records: Sequence[Record], format: str = "records", path: str | Path | None = None, max_side: int | None = None):
        if not records:
            raise DataFormatError(path, "dataset has no records")
        self.records: list[Record] = list(records)
        self.format = format
        self.path = Path(path) if path is not None else None
        self.max_side = max_side
        self._seed: int | None = None
        self._epoch = 0
        self._start = 0
        self._rank: int | None = None
        self._world_size: int | None = None
        self.skipped = 0  # samples skipped (missing/corrupt image) by this process, all passes
        self.yielded = 0

    def __len__(self) -> int:
        """Number of records (before any image turns out to be unusable)."""
        return len(self.records)

    # --- configuration (each returns self, so calls chain) ---------------------------------
    def shuffle(self, seed: int) -> "CafeDataset":
        """Shuffle with a permutation derived from (seed, epoch); see set_epoch."""
        self._seed = seed
        return self

    def set_epoch(self, epoch: int) -> "CafeDataset":
        """Select the epoch (new permutation when shuffling) and reset the start position to 0."""
        self._epoch = epoch
        self._start = 0
        return self

    def skip(self, n: int) -> "CafeDataset":
        """Start this epoch at position n of the (shuffled) global order: for resuming after n
        records of the epoch were consumed across all ranks and workers."""
        if not 0 <= n <= len(self.records):
            raise ValueError(f"skip({n}) outside 0..{len(self.records)}")
        self._start = n
        return self

    def shard(self, rank: int, world_size: int) -> "CafeDataset":
        """Read only this rank's share. Without a call, the rank comes from torch.distributed when
        it is initialised, else the process reads everything."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self._rank, self._world_size = rank, world_size
        return self

    # --- iteration --------------------------------------------------------------------------
    def epoch_order(self) -> list[int]:
        """Record indices of the current epoch in reading order (all shards, before skip)."""
        order = list(range(len(self.records)))
        if self._seed is not None:
            random.Random(f"cafe-dataset:{self._seed}:{self._epoch}").shuffle(order)
        return order

    def _rank_and_world(self) -> tuple[int, int]:
        if self._world_size is not None:
            return self._rank or 0, self._world_size
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def shard_indices(self) -> list[int]:
        """Record indices this process (rank, dataloader worker) reads in the current epoch."""
        rank, world = self._rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k, n_shards = rank * workers + worker, world * workers
        return self.epoch_order()[self._start :][k::n_shards]

    def load(self, rec: Record) -> CafeSample:
        """The sample of one record (opens its image). Raises on a missing/corrupt image."""
        image = load_image(rec.image_path, self.max_side) if rec.image_path is not None else None
        return CafeSample(id=rec.id, image=image, conversation=list(rec.conversation), caption=rec.contrastive_caption)

    def __iter__(self) -> Iterator[CafeSample]:
        indices = self.shard_indices()
        skipped = yielded = 0
        for i in indices:
            rec = self.records[i]
            try:
                sample = self.load(rec)
            # Any decode failure (PIL raises OSError, ValueError, SyntaxError, DecompressionBombError,
            # struct.error ...) is one bad file, not a reason to stop training.
            except Exception as e:  # noqa: BLE001
                skipped += 1
                self.skipped += 1
                if skipped <= MAX_SKIP_WARNINGS:
                    log.warning("skipping sample %s (%s): unusable image %s: %s: %s", rec.id, rec.source, rec.image_path, type(e).__name__, e)
                continue
            yielded += 1
            self.yielded += 1
            yield sample
        if skipped:
            log.warning("skipped %d of %d samples with missing or corrupt images in this pass", skipped, len(indices))
        if indices and not yielded:
            raise DataFormatError(self.path, f"zero usable samples: all {len(indices)} records of this shard have missing or corrupt images")


def open_dataset(path: str | Path, image_root: str | Path | None = None, max_side: int | None = None) -> CafeDataset:
    """A CafeDataset for any supported dataset path (folder with llava.json, .json LLaVA file,
    .jsonl / .csv image-caption pairs, or a folder of images with .txt sidecars).

    Raises DataFormatError on malformed records, on no records, and when no record is usable
    (every image file missing). Missing images are otherwise logged here and skipped while streaming.
    """
    fmt, records_iter = read_records(path, image_root)
    records = list(records_iter)
    if not records:
        raise DataFormatError(path, f"zero usable samples: no records found ({fmt} format)")
    missing = [r for r in records if r.image_path is not None and not r.image_path.is_file()]
    if len(missing) == len(records):
        raise DataFormatError(
            path,
            f"zero usable samples: none of the {len(records)} image files exist (first: {missing[0].image_path}); "
            "is the image folder (image_root) right?",
        )
    if missing:
        log.warning("%s: %d of %d image files are missing; those samples will be skipped", path, len(missing), len(records))
    return CafeDataset(records, format=fmt, path=path, max_side=max_side)
