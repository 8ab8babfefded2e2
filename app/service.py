"""PhotoService: the state behind the web UI, shared by every browser tab of one server.

One CafeModel serves indexing, search and answers. Indexing runs in a background thread (one job at
a time) that reports progress, so the page never waits on it and every tab sees the same job and
the same index. Store calls from the job and from searches are serialized (PhotoStore is made for
one caller at a time per process). Nothing here imports gradio.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from app.answer import AnswerConfig, Answerer
from app.config import ConfigError, IndexConfig, resolve_model
from app.photos import IMAGE_EXTENSIONS, SkipPhoto, load_photo, photo_path
from app.search import Filters, Hit, QueryError, search
from app.store import photo_id

THUMBNAIL_SIDE = 384  # gallery thumbnails: small to send, big enough to see the photo
CHAT_THUMBNAIL_SIDE = 160  # photos inside chat messages: a glance, the gallery has the big one


class _SerializedStore:
    """A PhotoStore whose methods run one at a time (the index job writes while tabs search)."""

    def __init__(self, store, lock: threading.RLock):
        self._store = store
        self._lock = lock

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        lock = self._lock

        def call(*args, **kwargs):
            with lock:
                out = attr(*args, **kwargs)
                # Generators (iter_records) must run under the lock too: drain them here.
                return iter(list(out)) if hasattr(out, "__next__") else out

        return call


@dataclass
class IndexJob:
    """One indexing run in the background. state: "running", "done" or "failed"."""

    roots: list[str]
    state: str = "running"
    done: int = 0
    total: int = 0  # files to read (new or changed); known once the walk finished
    report: object = None  # app.index.IndexReport when done
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def describe(self) -> str:
        """One line for the status area."""
        if self.state == "running":
            return (f"indexing {', '.join(self.roots)}: {self.done}/{self.total} photos" if self.total
                    else f"indexing {', '.join(self.roots)}: looking for photos")
        if self.state == "failed":
            return f"indexing failed: {self.error}"
        r = self.report
        return (f"indexed {', '.join(self.roots)}: added {r.added}, updated {r.updated}, removed {r.removed}, "
                f"unchanged {r.unchanged}, skipped {len(r.skipped)} ({r.seconds:.1f} s)")


class PhotoService:
    """A model, its photo index and answerer, the indexed roots, and the background index job.

    model: a loaded CafeModel, or a model path / hub id / None (the shipped demo model).
    thumbs_dir: where thumbnails are written (the server's own temp folder).
    """

    def __init__(self, db: str | os.PathLike, model=None, *, device: str = "auto", thumbs_dir: str | os.PathLike,
                 answer_config: AnswerConfig | None = None, index_config: IndexConfig | None = None):
        self.db = os.fspath(db)
        self.device = device
        self.index_config = index_config or IndexConfig()
        self.answer_config = answer_config or AnswerConfig()
        self.thumbs_dir = Path(thumbs_dir)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        self._store_lock = threading.RLock()
        self._job_lock = threading.Lock()
        self.job: IndexJob | None = None
        self._thread: threading.Thread | None = None
        self.roots: list[str] = []
        # Called with each folder indexed for the first time (the UI makes it servable).
        self.on_new_root: Callable[[str], None] | None = None
        self._open(model)

    # -------------------------------------------------------------------------------- model + index

    def _open(self, model) -> None:
        from app.index import PhotoIndex

        if model is None or isinstance(model, (str, os.PathLike)):
            from cafe_core import CafeModel

            model = CafeModel.load(resolve_model(os.fspath(model) if model else None), device=self.device,
                                   batch_size=self.index_config.batch_size)
        # create=True: a model without an index yet gets an empty one (the Library tab offers indexing).
        index = PhotoIndex.open(db=self.db, model=model, create=True, config=self.index_config)
        index.store = _SerializedStore(index.store, self._store_lock)
        self.model, self.index = model, index
        self.answerer = Answerer(model, index, self.answer_config)
        known = {m.get("root") for _, metas, _ in index.store.iter_records() for m in metas}
        self.roots = sorted(set(self.roots) | {r for r in known if r})

    def switch_model(self, model: str) -> None:
        """Load another model (its own index in the same database; re-index to fill it)."""
        if not model or not str(model).strip():
            raise ConfigError("give a model folder or hub id")
        if self.indexing:
            raise ConfigError("indexing is running; switch models when it is done")
        old = self.model
        self._open(str(model).strip())
        del old  # the old model is freed with its last reference: never two models held for long

    # ------------------------------------------------------------------------------------- indexing

    @property
    def indexing(self) -> bool:
        return self.job is not None and self.job.state == "running"

    def start_indexing(self, folders: list[str] | str) -> IndexJob:
        """Index (or update) folders in the background; returns the job (the running one if busy)."""
        if isinstance(folders, str):
            folders = [folders]
        roots = [photo_path(f.strip()) for f in folders if f and f.strip()]
        if not roots:
            raise ConfigError("choose or type a photo folder")
        for root in roots:
            if not os.path.isdir(root):
                raise ConfigError(f"{root} is not a folder")
        with self._job_lock:
            if self.indexing:
                return self.job
            job = IndexJob(roots)
            self.job = job
            self._thread = threading.Thread(target=self._run_job, args=(job,), name="index-job", daemon=True)
            self._thread.start()
        return job

    def _run_job(self, job: IndexJob) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            job.report = self.index.update(job.roots, on_progress=progress)
            for root in job.roots:
                if root not in self.roots and self.on_new_root is not None:
                    self.on_new_root(root)
            self.roots = sorted(set(self.roots) | set(job.roots))
            job.state = "done"
        except Exception as e:  # shown in the UI; the index keeps what was written (rerun continues)
            job.error = f"{type(e).__name__}: {e}"
            job.state = "failed"
        finally:
            job.finished = time.time()

    def wait(self, timeout: float | None = None) -> IndexJob | None:
        """Block until the current job ends (tests, the demo); returns it."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.job

    # ------------------------------------------------------------------------------------- queries

    def search(self, text: str | None = None, image=None, k: int = 12, min_score: float | None = None,
               filters: Filters | None = None) -> list[Hit]:
        """app.search.search on this service's index."""
        return search(self.index, text=text or None, image=image, k=k, min_score=min_score, filters=filters)

    def indexed_photo(self, path: str) -> str:
        """`path` if it is a photo in the index, else QueryError (handlers never read other files)."""
        path = photo_path(path) if path else ""
        if not path or not self.index.store.get([photo_id(path)]):
            raise QueryError("that photo is not in the index")
        return path

    def stats(self) -> dict:
        """Index statistics for the Settings and Library tabs."""
        skipped = self.index.store.skipped()
        return {
            "model": self.model.name,
            "fingerprint": self.model.fingerprint,
            "embedding_dim": self.model.dim,
            "database": self.db,
            "photos": self.index.count(),
            "skipped": len(skipped),
            "roots": list(self.roots),
        }

    def skip_list(self) -> list[tuple[str, str, str]]:
        """(path, reason, detail) of every skipped file under the indexed roots."""
        return sorted((s.path, s.reason, s.detail) for s in self.index.store.skipped().values())

    def folders(self) -> list[str]:
        """Every folder that holds indexed photos (for the folder filter)."""
        found: set[str] = set()
        for _, metas, _ in self.index.store.iter_records():
            found.update(m.get("folder", "") for m in metas)
        return sorted(f for f in found if f)

    # ---------------------------------------------------------------------------------- thumbnails

    def thumbnail(self, path: str, side: int = THUMBNAIL_SIDE) -> str:
        """A JPEG thumbnail of a photo in the server's temp folder (made once per file version and size)."""
        st = os.stat(path)
        key = hashlib.blake2b(f"{path}|{st.st_size}|{st.st_mtime_ns}|{side}".encode(), digest_size=12).hexdigest()
        out = self.thumbs_dir / f"{key}.jpg"
        if not out.exists():
            try:
                img, _ = load_photo(path, max_pixels=self.index_config.max_pixels, max_side=side)
            except SkipPhoto as e:
                raise QueryError(f"cannot read {path}: {e}") from None
            tmp = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            self.thumbs_dir.mkdir(parents=True, exist_ok=True)  # recreate if a temp cleaner removed it
            img.save(tmp, "JPEG", quality=85)
            os.replace(tmp, out)  # atomic: a tab never sees half a thumbnail
        return str(out)

    def servable(self, path: str) -> bool:
        """True for an image file inside an indexed root, symlinks resolved (what the UI may serve)."""
        real = os.path.realpath(path)
        if Path(real).suffix.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(real):
            return False
        return any(_inside(real, os.path.realpath(r)) for r in self.roots)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
