"""PhotoService: everything the web UI does, behind one door, shared by every browser tab of one server.

One CafeModel serves indexing, search and answers. Indexing runs in a background thread (one job at
a time) that reports progress, so the page never waits on it and every tab sees the same job and
the same index. What the pages show (folders, counts, the photo timeline) is read from the store
each time it is asked for, so a reload shows what is there. Nothing here imports gradio.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from app.answer import Answer, Answerer, Turn
from app.calibration import model_settings
from app.config import AnswerConfig, ConfigError, IndexConfig, ModelConfig, SearchConfig
from app.photos import SkipPhoto, load_photo, photo_path, walk_photos
from app.search import Filters, Hit, QueryError, hit_from_record, search, split_at
from app.store import photo_id

THUMBNAIL_SIDE = 384  # gallery thumbnails: small to send, big enough to see the photo
CHAT_THUMBNAIL_SIDE = 160  # photos inside chat messages: a glance, the gallery has the big one


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
    """A model, its photo index, the answers' settings, and the background index job: the UI's one door to them.

    model: a loaded CafeModel, or a model path / hub id / None (the shipped demo model).
    thumbs_dir: where thumbnails are written (the server's own temp folder).
    """

    def __init__(self, db: str | os.PathLike, model=None, *, device: str = ModelConfig.device,
                 thumbs_dir: str | os.PathLike, answer_config: AnswerConfig | None = None,
                 index_config: IndexConfig | None = None, search_config: SearchConfig | None = None,
                 dtype: str = ModelConfig.dtype, image_crops: str = ModelConfig.image_crops):
        self.db = os.fspath(db)
        self.model_config = ModelConfig(device=device, dtype=dtype, image_crops=image_crops)
        self.index_config = index_config or IndexConfig()
        # Defaults; the loaded model's calibrated settings (app.calibration) apply over them.
        self._answer_defaults = answer_config or AnswerConfig()
        self._search_defaults = search_config or SearchConfig()
        self.thumbs_dir = Path(thumbs_dir)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        self._job_lock = threading.Lock()
        self.job: IndexJob | None = None
        self._thread: threading.Thread | None = None
        self._open(model)

    # -------------------------------------------------------------------------------- model + index

    def _open(self, model) -> None:
        from app.index import PhotoIndex
        from app.model import load_model

        mc = self.model_config
        model = load_model(model, device=mc.device, dtype=mc.dtype, batch_size=self.index_config.batch_size,
                           image_crops=mc.image_crops)
        # create=True: a model without an index yet gets an empty one (the Library tab offers indexing).
        index = PhotoIndex.open(db=self.db, model=model, create=True, config=self.index_config)
        settings = model_settings(model, self._answer_defaults, self._search_defaults)
        # All at once, after everything loaded: a model that fails leaves the previous one in place, whole.
        self.model, self.index = model, index
        self.answer_config, self.search_config, self.vocab = settings.answer, settings.search, settings.vocab

    @property
    def model_name(self) -> str:
        return self.model.name

    def switch_model(self, model: str) -> None:
        """Load another model (its own index in the same database; re-index to fill it). A name that does
        not load is app.model.ModelNotLoadable, with one message whatever the cause (the model box is
        user input: the message must not tell which server paths exist)."""
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
        """Index (or update) folders in the background; returns the job (the running one if busy).

        ConfigError, before any work, for a path that is not a folder or a folder with no photos in it.
        """
        if isinstance(folders, str):
            folders = [folders]
        roots = [photo_path(f.strip()) for f in folders if f and f.strip()]
        if not roots:
            raise ConfigError("choose or type a photo folder")
        for root in roots:
            if not os.path.isdir(root):
                raise ConfigError(f"{root} is not a folder")
            if root not in self.roots() and next(iter(walk_photos([root])), None) is None:
                raise ConfigError(f"no photos found in {root} (JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC files, "
                                  "hidden folders skipped)")
        with self._job_lock:
            if self.indexing:
                return self.job
            job = IndexJob(roots)
            self.job = job
            self._thread = threading.Thread(target=self._run_job, args=(job,), name="index-job", daemon=True)
            self._thread.start()
        return job

    def reindex_all(self) -> IndexJob:
        roots = self.roots()
        if not roots:
            raise ConfigError("no folders indexed yet: index a folder first")
        return self.start_indexing(roots)

    def _run_job(self, job: IndexJob) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            job.report = self.index.update(job.roots, on_progress=progress)
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

    def search(self, text: str | None = None, image=None, k: int | None = None, min_score: float | None = None,
               filters: Filters | None = None) -> list[Hit]:
        """app.search.search on this service's index."""
        return search(self.index, text=text or None, image=image, k=k or self.search_config.k, min_score=min_score,
                      filters=filters, text_weight=self.search_config.composed_text_weight)

    def cutoff(self, image) -> float | None:
        """The relevance cutoff of a query: the image one for photo (or photo + text) queries."""
        return self.search_config.min_image_score if image is not None else self.search_config.min_text_score

    def search_page(self, text: str | None = None, image=None, k: int | None = None,
                    filters: Filters | None = None) -> tuple[list[Hit], list[Hit]]:
        """The top k for a query split at its relevance cutoff: (shown, below the cutoff)."""
        return split_at(self.search(text, image, k, None, filters), self.cutoff(image))

    # ------------------------------------------------------------------------ what the model knows

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the model never saw in training ([] for an open-vocabulary model)."""
        return self.vocab.unknown(text) if self.vocab and text else []

    def example_queries(self, n: int = 4) -> list[str]:
        """Queries built from the words the model was trained on (for an open-vocabulary model: generic ones)."""
        from data.vocab import BACKGROUNDS, COLORS, SHAPES

        if self.vocab is None:
            return ["a dog on the beach", "a birthday cake", "sunset over the sea", "a red car"][:n]
        colors, shapes = self.vocab.most_common(COLORS), self.vocab.most_common(SHAPES)
        backgrounds = self.vocab.most_common(BACKGROUNDS)
        if not (colors and shapes):
            return self.vocab.most_common(sorted(self.vocab.words))[:n]
        out = [f"a {colors[0]} {shapes[0]}", f"a {colors[-1]} {shapes[-1]} and a {colors[1 % len(colors)]} "
               f"{shapes[1 % len(shapes)]}"]
        if backgrounds:
            out.append(f"a {colors[2 % len(colors)]} {shapes[2 % len(shapes)]} on a {backgrounds[0]} background")
        out.append(f"a small {colors[3 % len(colors)]} {shapes[3 % len(shapes)]} on the left")
        return out[:n]

    def example_questions(self) -> list[str]:
        """Chat examples built like example_queries: a question naming its photo, a search, a follow-up."""
        queries = self.example_queries(2)
        the = queries[0].replace("a ", "the ", 1)
        return [f"What color is the background in the photo with {the}?", f"Show me photos of {queries[-1]}",
                "When was it taken?"]

    def model_scope(self) -> str:
        """One line on what the loaded model can recognise."""
        if self.vocab is None:
            return f"`{self.model.name}` has no training vocabulary on file: it is treated as open-vocabulary."
        return (f"`{Path(self.model.name).name}` was trained on {len(self.vocab.words)} words (the sample world's "
                "shapes, colors, sizes, positions and backgrounds); queries with other words get a note.")

    def ask(self, question: str, image=None, history: Sequence[Turn] = (), config: AnswerConfig | None = None,
            **overrides) -> Iterator[Answer]:
        """Stream a checked, grounded answer (app.answer.Answerer.stream), given the conversation so far;
        ``overrides`` replace AnswerConfig fields."""
        cfg = replace(config or self.answer_config, **overrides)
        return Answerer(self.model, self.index, cfg, vocab=self.vocab).stream(question, image=image, history=history)

    def indexed_photo(self, path: str) -> str:
        """`path` if it is a photo in the index, else QueryError (handlers never read other files)."""
        path = photo_path(path) if path else ""
        if not path or not self.index.store.get([photo_id(path)]):
            raise QueryError("that photo is not in the index")
        return path

    def photo_file(self, record_id: str) -> str | None:
        """The path of the indexed photo with this record id, or None (what the server may send)."""
        found = self.index.store.get([record_id]) if record_id else {}
        return found[record_id]["path"] if record_id in found else None

    def timeline(self, offset: int = 0, limit: int = 60, filters: Filters | None = None) -> tuple[list[Hit], int]:
        """A page of the library (the photos ``filters`` lets through), newest first, and how many there are."""
        records = [(i, m) for ids, metas, _ in self.index.store.iter_records() for i, m in zip(ids, metas)
                   if filters is None or filters.matches(m)]
        records.sort(key=lambda r: (-float(r[1].get("taken", 0.0)), r[1].get("path", "")))
        return [hit_from_record(i, 1.0, m) for i, m in records[offset: offset + limit]], len(records)

    # ---------------------------------------------------------------------------------- library state

    def roots(self) -> list[str]:
        """Every folder indexed as a root, read from the store (so every tab and reload agrees)."""
        found = {m.get("root") for _, metas, _ in self.index.store.iter_records() for m in metas}
        return sorted(r for r in found if r)

    def folders(self) -> list[str]:
        """Every folder that holds indexed photos (for the folder filter)."""
        found: set[str] = set()
        for _, metas, _ in self.index.store.iter_records():
            found.update(m.get("folder", "") for m in metas)
        return sorted(f for f in found if f)

    def stats(self) -> dict:
        """Index statistics for the Settings and Library tabs."""
        return {
            "model": self.model.name,
            "fingerprint": self.model.fingerprint,
            "embedding_dim": self.model.dim,
            "database": self.db,
            "photos": self.index.count(),
            "skipped": len(self.index.store.skipped()),
            "roots": self.roots(),
        }

    def skip_list(self) -> list[tuple[str, str, str]]:
        """(path, reason, detail) of every skipped file under the indexed roots."""
        return sorted((s.path, s.reason, s.detail) for s in self.index.store.skipped().values())

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
