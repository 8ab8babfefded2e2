"""PhotoIndex: keep a Chroma collection of CAFe photo embeddings in step with photo folders.

An update compares a fresh walk of the folders with what the store holds (path, size, mtime) and
only reads the files that are new or changed; a changed file whose bytes hash the same as a stored
photo (touched, moved, copied) reuses that vector instead of being embedded again. Photos that
vanished are removed, files that fail to load go to the skip list. Every write is an upsert keyed
by the path, so a run killed at any point and rerun ends with each photo stored exactly once.

Decoding runs in a thread pool ahead of the model (PIL and torch both release the GIL), so the
model always has the next batch ready.

    from app.index import PhotoIndex
    index = PhotoIndex.open(db="~/.local/share/cafe-photos/db", model="tiny:llava", create=True)
    report = index.update(["~/Pictures"], progress=True)
    print(report.to_json())
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from app.config import DEFAULT_CHROMA_PORT, ConfigError, IndexConfig, ModelConfig, default_db_dir, resolve_model
from app.photos import (
    CORRUPT,
    TOO_LARGE,
    FileEntry,
    PhotoMeta,
    SkipPhoto,
    decode_photo,
    photo_path,
    read_photo,
    under_any,
    walk_photos,
)
from app.store import (
    STORE_BATCH,
    ChromaLocation,
    PhotoStore,
    SkipRecord,
    photo_id,
    photo_record,
    printable_path,
    shard_of,
)


@dataclass
class IndexReport:
    """What an update did. `total` = photos indexed under the roots (in this shard) after the run."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[SkipRecord] = field(default_factory=list)
    seconds: float = 0.0
    read: int = 0  # files read this run (new, changed, or retried): 0 on an unchanged library
    embedded: int = 0  # photos that went through the model (the others reused a stored vector)

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged

    def to_json(self) -> dict:
        """The CLI's JSON contract."""
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "total": self.total,
        }


@dataclass
class _Plan:
    """What an update will do (PhotoIndex._plan)."""

    stored: dict  # id -> StoredPhoto under the roots (this shard)
    skips: dict  # id -> SkipRecord under the roots (this shard)
    by_hash: dict  # content hash -> id of any stored photo with those bytes
    todo: list = field(default_factory=list)  # (id, FileEntry) to read
    vanished: list = field(default_factory=list)  # ids whose file is gone
    skips_resolved: list = field(default_factory=list)  # skip records to clear


@dataclass
class _Loaded:
    entry: FileEntry
    id: str
    meta: PhotoMeta
    image: object | None  # PIL image, or None when a stored vector with the same content hash is reused


@dataclass
class _Failed:
    entry: FileEntry
    id: str
    error: SkipPhoto


def _is_name(model) -> bool:
    """A model given by name (or None: the shipped one), not a loaded CafeModel."""
    return model is None or isinstance(model, (str, os.PathLike))


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard wants I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return i, n


class PhotoIndex:
    """A model plus the Chroma collection that holds its photo vectors.

    Attributes: `model` (cafe_core.CafeModel), `store` (app.store.PhotoStore), `config` (IndexConfig).
    Search lives in app.search and takes a PhotoIndex.
    """

    def __init__(self, model, store: PhotoStore, config: IndexConfig | None = None):
        self.model = model
        self.store = store
        self.config = config or IndexConfig()

    @classmethod
    def open(
        cls,
        db: str | os.PathLike | None = None,
        model=None,
        *,
        create: bool = False,
        chroma_host: str | None = None,
        chroma_port: int | None = None,
        config: IndexConfig | None = None,
        device: str = ModelConfig.device,
        dtype: str = ModelConfig.dtype,
        image_crops: str = ModelConfig.image_crops,
    ) -> "PhotoIndex":
        """Open the index of `model` in a database.

        db: folder of an embedded Chroma database (default: app.config.default_db_dir()); ignored
            when chroma_host is given (a `chroma run` server).
        model: a loaded cafe_core.CafeModel, a model path/hub id, or None for the shipped demo model.
        create: True to start a new index for this model (indexing); False refuses a database that
            holds no index for this model (searching), with a message that says how to re-index.
        device, dtype, image_crops: how a model given by name loads (app.config.ModelConfig).

        The database is opened before the model loads: one that cannot serve (missing, damaged,
        read-only, empty when searching) fails in about a second, not after loading torch and the model.
        """
        from app.model import load_model

        config = config or IndexConfig()
        if chroma_host:
            location = ChromaLocation(host=chroma_host, port=int(chroma_port or DEFAULT_CHROMA_PORT))
        else:
            location = ChromaLocation(db_dir=os.fspath(db or default_db_dir()))
        name = resolve_model(os.fspath(model) if model else None) if _is_name(model) else model.name
        PhotoStore.preflight(location, name, create=create, image_crops=image_crops)
        model = load_model(model, device=device, dtype=dtype, batch_size=config.batch_size, image_crops=image_crops)
        store = PhotoStore(location, model.fingerprint, model.dim, model_name=model.name, create=create,
                           image_crops=model.image_crops)
        return cls(model, store, config)

    def count(self) -> int:
        """Photos in the index."""
        return self.store.count()

    # ------------------------------------------------------------------------------------- update

    def update(
        self, roots: Iterable[str | os.PathLike], shard: tuple[int, int] = (0, 1), progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> IndexReport:
        """Bring the index in step with the photo folders `roots`; return what changed.

        shard=(i, n) handles only the photos whose path hashes to i (run n of these, in parallel
        processes or machines sharing one Chroma server, to split a library). Photos stored from
        other roots are left alone; photos under the roots that vanished are removed.
        on_progress(done, total) is called once the files to read are known and after each file
        (the web UI's progress bar).
        """
        started = time.perf_counter()
        report = IndexReport()
        plan = self._plan([photo_path(r) for r in roots], shard, report)
        self._write(plan, report, progress, on_progress)
        # Deletions last: a vanished photo may have lent its vector to a moved copy above.
        self.store.delete(plan.vanished)
        report.removed += len(plan.vanished)
        self.store.remove_skips(plan.skips_resolved)
        report.skipped.sort(key=lambda s: s.path)
        report.seconds = time.perf_counter() - started
        return report

    def _plan(self, roots: list[str], shard: tuple[int, int], report: IndexReport) -> "_Plan":
        """Compare a walk of the roots with the store: what to read, what vanished, what is unchanged."""
        shard_i, shard_n = shard

        def mine(record_id: str) -> bool:
            return shard_n == 1 or shard_of(record_id, shard_n) == shard_i

        stored_all = self.store.scan()
        stored = {i: s for i, s in stored_all.items() if mine(i) and under_any(s.path, roots)}
        skips = {i: s for i, s in self.store.skipped().items() if mine(i) and under_any(s.path, roots)}
        # Any stored photo with the same bytes lends its vector (touched, moved or copied files).
        by_hash = {s.content_hash: s.id for s in stored_all.values() if s.content_hash}
        plan = _Plan(stored, skips, by_hash)
        seen: set[str] = set()
        for entry in walk_photos(roots):
            record_id = photo_id(entry.path)
            if not mine(record_id) or record_id in seen:
                continue
            seen.add(record_id)
            known = stored.get(record_id)
            if known and known.size == entry.size and known.mtime_ns == entry.mtime_ns:
                report.unchanged += 1
                if record_id in skips:  # a run died between storing the photo and clearing its skip
                    plan.skips_resolved.append(record_id)
                continue
            skip = skips.get(record_id)
            if skip and skip.size == entry.size and skip.mtime_ns == entry.mtime_ns and not (
                skip.reason == TOO_LARGE and self.config.max_pixels > skip.max_pixels
            ):
                report.skipped.append(skip)  # unchanged since it failed: not retried
                continue
            plan.todo.append((record_id, entry))
        report.read = len(plan.todo)
        plan.vanished = [i for i in stored if i not in seen]
        plan.skips_resolved += [i for i in skips if i not in seen]
        return plan

    def _write(self, plan: "_Plan", report: IndexReport, progress: bool, on_progress) -> None:
        """Read, embed and store the planned files, reporting progress after each."""
        writer = _BatchWriter(self, plan.stored, plan.skips, plan.by_hash, report)
        total = len(plan.todo)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="photo", desc="indexing", smoothing=0.1)
        if on_progress is not None:
            on_progress(0, total)
        try:
            for done, result in enumerate(self._load_all(plan.todo, plan.by_hash), 1):
                writer.add(result)
                if bar is not None:
                    bar.update(1)
                if on_progress is not None:
                    on_progress(done, total)
            writer.flush()
        finally:
            if bar is not None:
                bar.close()

    def _load_all(self, todo: list[tuple[str, FileEntry]], by_hash: dict[str, str]):
        """Yield _Loaded/_Failed in order, decoding up to prefetch_batches batches ahead of the caller."""
        cfg = self.config
        window = max(cfg.workers, cfg.batch_size * cfg.prefetch_batches)

        def load(item: tuple[str, FileEntry]):
            record_id, entry = item
            try:
                raw = read_photo(entry.path, root=entry.root, max_pixels=cfg.max_pixels)
                if raw.meta.content_hash in by_hash:
                    return _Loaded(entry, record_id, raw.meta, None)
                return _Loaded(entry, record_id, raw.meta, decode_photo(raw, cfg.max_side))
            except SkipPhoto as e:
                return _Failed(entry, record_id, e)
            except Exception as e:  # a decoder bug or MemoryError must cost one photo, not the run
                return _Failed(entry, record_id, SkipPhoto(CORRUPT, f"{type(e).__name__}: {e}"))

        with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            items = iter(todo)
            try:
                for item in items:
                    pending.append(pool.submit(load, item))
                    if len(pending) >= window:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:  # interrupted: drop queued work quickly
                    fut.cancel()


class _BatchWriter:
    """Collects loaded photos and writes them in model-sized batches (embed, then upsert)."""

    def __init__(self, index: PhotoIndex, stored: dict, skips: dict, by_hash: dict, report: IndexReport):
        self.index = index
        self.by_hash = by_hash
        self.stored = stored
        self.skips = skips
        self.report = report
        self.to_embed: list[_Loaded] = []
        self.to_reuse: list[_Loaded] = []
        self.failed: list[_Failed] = []

    def add(self, result) -> None:
        if isinstance(result, _Failed):
            self.failed.append(result)
        elif result.image is None:
            self.to_reuse.append(result)
        else:
            self.to_embed.append(result)
        if len(self.to_embed) >= self.index.config.batch_size or len(self.to_reuse) + len(self.failed) >= STORE_BATCH:
            self.flush()

    def flush(self) -> None:
        store, report = self.index.store, self.report
        done: list[_Loaded] = []

        if self.to_reuse:
            reuse, self.to_reuse = self.to_reuse, []
            sources = {item.id: self.by_hash[item.meta.content_hash] for item in reuse}
            vectors = store.vectors(sorted(set(sources.values())))
            reused: list[_Loaded] = []
            for item in reuse:
                vector = vectors.get(sources[item.id])
                if vector is None:  # the source vanished meanwhile (another shard deleted it)
                    try:
                        raw = read_photo(item.entry.path, root=item.entry.root, max_pixels=self.index.config.max_pixels)
                        item.image = decode_photo(raw, self.index.config.max_side)
                        self.to_embed.append(item)
                    except SkipPhoto as e:
                        self.failed.append(_Failed(item.entry, item.id, e))
                    continue
                reused.append(item)
            if reused:
                store.upsert(
                    [item.id for item in reused],
                    np.stack([vectors[sources[item.id]] for item in reused]),
                    [photo_record(item.meta) for item in reused],
                )
                done.extend(reused)

        if self.to_embed:
            batch, self.to_embed = self.to_embed, []
            vectors = self.index.model.embed_images([item.image for item in batch], batch_size=len(batch))
            store.upsert([item.id for item in batch], vectors, [photo_record(item.meta) for item in batch])
            report.embedded += len(batch)
            done.extend(batch)
            # Later copies of these bytes in this run reuse the stored vectors (the decode threads
            # read this dict; adding keys is atomic under the GIL).
            for item in batch:
                self.by_hash.setdefault(item.meta.content_hash, item.id)

        for item in done:
            if item.id in self.stored:
                report.updated += 1
            else:
                report.added += 1
        # A photo that loads now leaves the skip list (after its vector is safely stored).
        store.remove_skips([item.id for item in done if item.id in self.skips])

        if self.failed:
            failed, self.failed = self.failed, []
            # Vector first, then the skip record: a run killed in between just retries the file.
            broken = [f.id for f in failed if f.id in self.stored]
            store.delete(broken)
            report.removed += len(broken)
            records = [
                SkipRecord(f.id, printable_path(f.entry.path), f.entry.size, f.entry.mtime_ns,
                           f.error.reason, f.error.detail, self.index.config.max_pixels)
                for f in failed
            ]
            store.add_skips(records)
            report.skipped.extend(records)
