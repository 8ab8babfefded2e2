"""The database side of the photo index: ChromaDB collections, the model-fingerprint guard, the skip list.

One collection per model fingerprint holds one vector per photo (cosine space; ids derived from the
absolute path, so writes are idempotent upserts). The collection's metadata records the fingerprint,
dimension and model name, and every read or write checks them: vectors from one model are never
mixed with, or queried by, another. Files that could not be indexed live in a second collection
(the skip list) so they are not retried until they change.

Vectors always come from the caller (cafe_core); Chroma's embedding function is never used.

Schema: each photo collection records the SCHEMA_VERSION it was written with. Opening one of an older
version migrates it step by step (ensure_version, one MIGRATIONS step per version); one of a newer
version is refused. A database that cannot be opened (damaged, read-only, a file instead of a folder)
is a StoreError that says what to do, and nothing is created for a command that only reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from app.config import DEFAULT_CHROMA_PORT

COLLECTION_PREFIX = "photos-"
SKIP_COLLECTION = "cafe-photos-skipped"
# Version 1: fingerprint, dim, model. Version 2: + image_crops (cafe_core.crops: "native" or "base").
SCHEMA_VERSION = 2
DB_FILE = "chroma.sqlite3"  # what makes a folder an embedded Chroma database
# Chroma pages: big enough to be fast, small enough to bound memory.
PAGE = 5000
# Records per write or query batch that is not a model batch (reused vectors, skips, neighbour queries).
STORE_BATCH = 256
# Cosine space (score = 1 - distance). ef_search 400 instead of Chroma's 100: recall@10 0.97 instead
# of 0.71 on 100k clustered 192-d vectors, at ~2 ms per query (benchmarks/index.py).
HNSW_CONFIG = {"space": "cosine", "ef_search": 400}


class StoreError(Exception):
    """The database cannot do what was asked; the message says why and what to do."""


class ModelMismatchError(StoreError):
    """The index was built with a different model than the one in use."""


class NotIndexedError(StoreError):
    """Nothing has been indexed in this database yet."""


def photo_id(path: str) -> str:
    """Stable record id for an absolute path (same path, same id, on every run and machine)."""
    return hashlib.blake2b(os.fsencode(path), digest_size=16).hexdigest()


def printable_path(path: str) -> str:
    """A path Chroma and JSON can store (names that are not valid UTF-8 get escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def photo_record(meta) -> dict:
    """Chroma metadata for a photo (an app.photos.PhotoMeta), with the derived fields that filters use.

    `folders` lists the photo's folder and its ancestors up to the root ("in this folder" filters),
    `cameras` the lower-case make, model and "make model" (camera filters), `taken` the capture time
    in epoch seconds (date filters and sorting).
    """
    from app.photos import folder_chain

    record = meta.to_dict()
    record["folders"] = folder_chain(meta.folder, meta.root)
    record["camera"] = meta.camera
    record["cameras"] = sorted({c.lower() for c in (meta.camera_make, meta.camera_model, meta.camera) if c})
    record["mtime"] = meta.mtime_ns / 1e9
    return record


def shard_of(record_id: str, shards: int) -> int:
    """Which of `shards` workers owns a record: a stable split of the library."""
    return int(record_id[:8], 16) % shards


@dataclass(frozen=True)
class ChromaLocation:
    """Where the vectors live: an embedded database folder, or a `chroma run` server (host given)."""

    db_dir: str | None = None
    host: str | None = None
    port: int = DEFAULT_CHROMA_PORT

    @property
    def embedded(self) -> bool:
        return not self.host

    def describe(self) -> str:
        return f"chroma server {self.host}:{self.port}" if self.host else f"database {self.db_dir}"

    def _path(self) -> Path:
        if not self.db_dir:
            raise StoreError("no database folder given")
        return Path(self.db_dir).expanduser()

    def connect(self, create: bool = False, hint: str = ""):
        """A Chroma client (telemetry off): PersistentClient for a folder, HttpClient for a server.

        create: make a missing database folder (indexing). Without it a missing folder is a
        NotIndexedError (ending with ``hint``, the command that fixes it) and nothing is written. A file
        where the folder should be, a damaged or read-only database are StoreErrors that say what to do.
        """
        if not self.host:
            check_folder(self._path(), create, hint)  # before chromadb is imported: these fail in no time
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self.host:
            try:
                return chromadb.HttpClient(host=self.host, port=int(self.port), settings=settings)
            except Exception as e:  # connection refused, bad host...
                raise StoreError(f"cannot reach the chroma server at {self.host}:{self.port}: {_one_line(e)}") from e
        path = self._path()
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the database folder {path} ({e.strerror}): choose another --db "
                                 "folder, or one you can write to") from e
        try:
            with chroma_errors(path):
                return chromadb.PersistentClient(path=str(path), settings=settings)
        except StoreError:
            _forget_system(str(path))
            raise

    def reconnect(self):
        """A client that sees what other processes wrote since this process opened the database.

        An embedded Chroma client keeps its vector index in memory and does not notice writes made by
        another process (a concurrent `index` run): its filtered reads then fail with "Error finding id"
        and its plain queries miss new photos. Chroma shares one in-memory system per folder and
        process; dropping that cache makes the next client load the folder afresh. Clients opened
        before keep working on their old view.
        """
        if self.embedded:
            from chromadb.api.client import SharedSystemClient

            SharedSystemClient.clear_system_cache()
        return self.connect(create=False)


def check_folder(path: Path, create: bool, hint: str = "") -> None:
    """StoreError/NotIndexedError for a database folder that cannot be one, before Chroma touches it."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"--db {path} is a file, not a database folder: give a folder (indexing creates it)")
    if not create and not (path / DB_FILE).is_file():
        what = "does not exist" if not path.exists() else "holds no database"
        raise NotIndexedError(f"no photos are indexed in database {path} yet (the folder {what}). Index them first: "
                              f"{hint or 'python -m app index PHOTOS_DIR --db ' + str(path)}")


def _forget_system(identifier: str) -> None:
    """Drop the half-started Chroma system a failed PersistentClient leaves in Chroma's per-process cache:
    otherwise every later client of that folder in this process fails on it (the web UI, tests)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(identifier, None)
    SharedSystemClient._identifier_to_refcount.pop(identifier, None)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@contextlib.contextmanager
def chroma_errors(path):
    """Turn what Chroma raises for a database it cannot use into a StoreError that says what to do."""
    import sqlite3

    from chromadb.errors import ChromaError

    try:
        yield
    except (ChromaError, sqlite3.Error, OSError) as e:
        detail = _one_line(e)
        low = detail.lower()
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            raise StoreError(f"the database {path} is damaged or not a Chroma database ({detail}): move the folder "
                             f"away (mv {path} {path}.broken) and index your photos again") from e
        if "readonly" in low or "read-only" in low or "permission denied" in low or "unable to open" in low:
            raise StoreError(f"cannot write to the database {path} ({detail}); Chroma writes even to search: make it "
                             f"writable (chmod -R u+w {path}) or copy the folder somewhere you can write") from e
        raise StoreError(f"cannot use the database {path}: {detail}") from e


def collection_name(fingerprint: str) -> str:
    """Chroma collection name for a model fingerprint (Chroma allows [a-zA-Z0-9._-], 3-512 chars)."""
    readable = re.sub(r"[^a-zA-Z0-9_-]+", "-", fingerprint).strip("-_")[:40]
    digest = hashlib.blake2b(fingerprint.encode("utf-8"), digest_size=6).hexdigest()
    return f"{COLLECTION_PREFIX}{readable}-{digest}" if readable else f"{COLLECTION_PREFIX}{digest}"


@dataclass(frozen=True)
class IndexedModel:
    """What a photo collection says about the model that filled it."""

    collection: str
    fingerprint: str
    dim: int
    model: str
    count: int
    image_crops: str = "native"
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class StoredPhoto:
    """The fields of a stored record that incremental indexing compares against the disk."""

    id: str
    path: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class SkipRecord:
    id: str
    path: str
    size: int
    mtime_ns: int
    reason: str
    detail: str
    max_pixels: int


def indexed_models(client) -> list[IndexedModel]:
    """Every photo collection in the database and the model it belongs to."""
    found = []
    for item in client.list_collections():
        name = item if isinstance(item, str) else item.name
        if not name.startswith(COLLECTION_PREFIX):
            continue
        col = client.get_collection(name, embedding_function=None)
        meta = col.metadata or {}
        found.append(
            IndexedModel(
                collection=name,
                fingerprint=str(meta.get("fingerprint", "?")),
                dim=int(meta.get("dim", 0)),
                model=str(meta.get("model", "?")),
                count=col.count(),
                image_crops=str(meta.get("image_crops", "native")),  # schema 1: native crops
                schema=schema_of(meta),
            )
        )
    return found


def _reindex_hint(model_name: str, image_crops: str = "native") -> str:
    crops = f" --image-crops {image_crops}" if image_crops != "native" else ""
    return f"python -m app index PHOTOS_DIR --db DB_DIR --model {model_name}{crops}"


# ------------------------------------------------------------------------------------------- schema


def schema_of(meta: dict | None) -> int:
    """The schema version a collection's metadata records (collections from before versioning: 1)."""
    try:
        return int((meta or {}).get("schema", 1))
    except (TypeError, ValueError):
        return 1


def _v1_to_v2(meta: dict) -> dict:
    """v2 records the crop setting the vectors were embedded with; every v1 collection used the
    checkpoint's native crops (cafe_core had no other setting then)."""
    return {**meta, "image_crops": "native"}


# MIGRATIONS[v] turns the metadata of a version-v collection into version v+1's (one step each).
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def ensure_version(collection, where: str = "this database") -> dict:
    """Bring a photo collection to SCHEMA_VERSION, one migration step at a time (each step written
    before the next one runs), and return its metadata. A collection written by a newer version of
    the app is refused: migrating down could lose what that version recorded."""
    meta = dict(collection.metadata or {})
    version = schema_of(meta)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the photo index in {where} was written by a newer version of this app (schema {version}; this one "
            f"reads up to {SCHEMA_VERSION}): update the app (git pull), or index into another --db folder")
    while version < SCHEMA_VERSION:
        meta = MIGRATIONS[version](meta)
        version += 1
        meta["schema"] = version
        collection.modify(metadata=meta)
    return meta


class PhotoStore:
    """The photo vectors of one model in one Chroma database.

    `create=True` makes the collection if missing (indexing); `create=False` refuses a database that
    was indexed with another model, or not at all (searching). Both refuse vectors of the wrong size.
    `image_crops` is the model's crop setting (CafeModel.image_crops), recorded with a new collection.

    Reads stay correct while another process writes (an `index` run next to a search): the store
    reopens the database when the photo count moved under it (at most once a second, so new photos
    show up within about a second), and retries a read that Chroma fails with a stale in-memory
    index. Use one PhotoStore per database and process; its methods may be called from several
    threads (the web UI's index job writes while its tabs search): each Chroma call holds the store's lock.
    """

    READ_ATTEMPTS = 20
    # Counting costs milliseconds at 100k photos and reopening competes with the writer for SQLite's
    # lock: look for other writers at most once per interval.
    REFRESH_INTERVAL_S = 1.0

    def __init__(self, location: ChromaLocation, fingerprint: str, dim: int, model_name: str = "",
                 create: bool = False, image_crops: str = "native"):
        self.location = location
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.model_name = model_name or fingerprint
        self.image_crops = image_crops
        self.name = collection_name(fingerprint)
        self._lock = threading.RLock()
        self.client = location.connect(create=create, hint=self._hint())
        with chroma_errors(location.db_dir or location.describe()):
            self.collection = self._open(create)
            self._seen_count = self.collection.count()
        self._skips = None
        self._checked_at = time.monotonic()

    def _hint(self) -> str:
        return _reindex_hint(self.model_name, self.image_crops)

    @staticmethod
    def preflight(location: ChromaLocation, model_name: str, create: bool = False, image_crops: str = "native") -> None:
        """Fail now if the database cannot serve a PhotoStore: called before the model loads, so a missing,
        damaged or read-only database (or an empty one, to search) is a StoreError within a second."""
        hint = _reindex_hint(model_name, image_crops)
        client = location.connect(create=create, hint=hint)
        if not create:
            with chroma_errors(location.db_dir or location.describe()):
                if not indexed_models(client):
                    raise NotIndexedError(
                        f"no photos are indexed in {location.describe()} yet. Index them first: {hint}")

    def _open(self, create: bool):
        existing = {m.collection: m for m in indexed_models(self.client)}
        if self.name not in existing and not create:
            self._refuse(list(existing.values()))
        if self.name in existing:
            col = self.client.get_collection(self.name, embedding_function=None)
        else:
            metadata = {
                "fingerprint": self.fingerprint,
                "dim": self.dim,
                "model": self.model_name,
                "image_crops": self.image_crops,
                "schema": SCHEMA_VERSION,
                "kind": "cafe-photos",
            }
            col = self.client.get_or_create_collection(  # another indexer may create it at the same moment
                self.name,
                embedding_function=None,  # vectors come from cafe_core only
                configuration={"hnsw": HNSW_CONFIG},
                metadata=metadata,
            )
        meta = ensure_version(col, self.location.describe())
        if meta.get("fingerprint") != self.fingerprint or int(meta.get("dim", -1)) != self.dim:
            raise ModelMismatchError(
                f"collection {self.name} belongs to model '{meta.get('model')}' (fingerprint "
                f"{meta.get('fingerprint')}, dim {meta.get('dim')}), not to '{self.model_name}' "
                f"(fingerprint {self.fingerprint}, dim {self.dim}). Re-index: {self._hint()}"
            )
        return col

    def _refuse(self, existing: list[IndexedModel]) -> None:
        """NotIndexedError or ModelMismatchError for a database that holds no index of this model."""
        others = [m for m in existing if m.count > 0] or existing
        where = self.location.describe()
        if not others:
            raise NotIndexedError(f"no photos are indexed in {where} yet. Index them first: {self._hint()}")
        crops = [m for m in others if m.model == self.model_name and m.image_crops != self.image_crops]
        if crops:
            theirs = crops[0].image_crops
            raise ModelMismatchError(
                f"{where} was indexed with '{self.model_name}' reading photos with --image-crops {theirs}, not "
                f"{self.image_crops}: vectors of the two settings do not compare. Pass --image-crops {theirs}, "
                f"or re-index with this setting: {self._hint()}")
        listing = "; ".join(f"'{m.model}' (fingerprint {m.fingerprint}, {m.count} photos)" for m in others)
        raise ModelMismatchError(
            f"{where} was indexed with another model: {listing}. "
            f"The model in use, '{self.model_name}' (fingerprint {self.fingerprint}), has no index there. "
            f"Re-index with it: {self._hint()}  "
            f"(or pass --model with the model that built the index)."
        )

    # ---------------------------------------------------------------------- concurrent writers

    def refresh(self) -> None:
        """Reopen the database so reads see what other processes wrote."""
        self.client = self.location.reconnect()
        self.collection = self.client.get_collection(self.name, embedding_function=None)
        self._skips = None
        self._seen_count = self.collection.count()
        self._checked_at = time.monotonic()

    def _read(self, fn):
        """Run a read under the lock, reopening the database when another process changed it (embedded
        Chroma only)."""
        with self._lock:
            return self._read_unlocked(fn)

    def _read_unlocked(self, fn):
        import chromadb.errors

        if self.location.embedded and time.monotonic() - self._checked_at >= self.REFRESH_INTERVAL_S:
            self._checked_at = time.monotonic()
            if self.collection.count() != self._seen_count:
                self.refresh()
        for attempt in range(self.READ_ATTEMPTS):
            try:
                return fn()
            except chromadb.errors.InternalError:
                if attempt == self.READ_ATTEMPTS - 1:
                    raise
                # A write landed between loading the index and reading it: reload and retry.
                time.sleep(min(0.5, 0.02 * (attempt + 1)))
                self.refresh()

    def _wrote(self) -> None:
        self._seen_count = self.collection.count()

    # ------------------------------------------------------------------------------------- vectors

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(
                f"vectors of shape {tuple(vectors.shape)} do not fit this index (dim {self.dim}, model "
                f"'{self.model_name}'): they come from another model. Index with that model first: "
                f"{_reindex_hint('MODEL')}"
            )
        return vectors

    def count(self) -> int:
        """Photos stored."""
        with self._lock:
            return self.collection.count()

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict]) -> None:
        """Insert or replace records by id (rerunning the same upsert changes nothing)."""
        if not ids:
            return
        vectors = self._check(vectors)
        with self._lock:
            self.collection.upsert(ids=list(ids), embeddings=vectors, metadatas=[_clean(m) for m in metadatas])
            self._wrote()

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock:
            for start in range(0, len(ids), PAGE):
                self.collection.delete(ids=list(ids[start : start + PAGE]))
            if ids:
                self._wrote()

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by id (missing ids are absent from the result)."""
        if not ids:
            return {}
        got = self._read(lambda: self.collection.get(ids=list(ids), include=["embeddings"]))
        return {i: np.asarray(v, dtype=np.float32) for i, v in zip(got["ids"], got["embeddings"])}

    def get(self, ids: Sequence[str]) -> dict[str, dict]:
        """Stored metadata by id."""
        if not ids:
            return {}
        got = self._read(lambda: self.collection.get(ids=list(ids), include=["metadatas"]))
        return dict(zip(got["ids"], got["metadatas"]))

    def query(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[str, float, dict]]:
        """Top-k records by cosine similarity: [(id, score = 1 - cosine distance, metadata)]."""
        vectors = self._check(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        return self.query_many(vectors, k, where)[0]

    def query_many(self, vectors: np.ndarray, k: int, where: dict | None = None) -> list[list[tuple[str, float, dict]]]:
        """query() for several vectors at once (one list of hits per row)."""
        vectors = self._check(vectors)

        def run():
            # n_results above the count just returns every record (and [] when there are none).
            res = self.collection.query(
                query_embeddings=vectors, n_results=max(1, int(k)), where=where or None,
                include=["distances", "metadatas"],
            )
            return [
                [(i, 1.0 - float(d), m) for i, d, m in zip(ids, dists, metas)]
                for ids, dists, metas in zip(res["ids"], res["distances"], res["metadatas"])
            ]

        return self._read(run)

    def iter_records(self, include_vectors: bool = False, where: dict | None = None) -> Iterator[tuple[list, list, Any]]:
        """Page through all records: yields (ids, metadatas, vectors-or-None) per page."""
        include = ["metadatas", "embeddings"] if include_vectors else ["metadatas"]
        offset = 0
        while True:
            got = self._read(
                lambda: self.collection.get(include=include, limit=PAGE, offset=offset, where=where or None)
            )
            ids = got["ids"]
            if not ids:
                return
            vecs = np.asarray(got["embeddings"], dtype=np.float32) if include_vectors else None
            yield ids, got["metadatas"], vecs
            if len(ids) < PAGE:
                return
            offset += len(ids)

    def scan(self) -> dict[str, StoredPhoto]:
        """Every stored photo's (path, size, mtime, hash), for comparison with a fresh walk."""
        out = {}
        for ids, metas, _ in self.iter_records():
            for i, m in zip(ids, metas):
                out[i] = StoredPhoto(i, m["path"], int(m["size"]), int(m["mtime_ns"]), m.get("content_hash", ""))
        return out

    # ------------------------------------------------------------------------------------ skip list

    @property
    def skips(self):
        with self._lock:
            if self._skips is None:
                # Records need a vector in Chroma; skipped files get a constant 1-d placeholder.
                self._skips = self.client.get_or_create_collection(
                    SKIP_COLLECTION, embedding_function=None, metadata={"kind": "cafe-photos-skips"}
                )
            return self._skips

    def skipped(self) -> dict[str, SkipRecord]:
        """The skip list: files that failed to load, by id."""
        out = {}
        offset = 0
        while True:
            got = self._read(lambda: self.skips.get(include=["metadatas"], limit=PAGE, offset=offset))
            for i, m in zip(got["ids"], got["metadatas"]):
                out[i] = SkipRecord(
                    i, m["path"], int(m["size"]), int(m["mtime_ns"]), m["reason"], m.get("detail", ""),
                    int(m.get("max_pixels", 0)),
                )
            if len(got["ids"]) < PAGE:
                return out
            offset += len(got["ids"])

    def add_skips(self, records: Sequence[SkipRecord]) -> None:
        if not records:
            return
        with self._lock:
            self._add_skips(records)

    def _add_skips(self, records: Sequence[SkipRecord]) -> None:
        self.skips.upsert(
            ids=[r.id for r in records],
            embeddings=np.ones((len(records), 1), dtype=np.float32),
            metadatas=[
                {"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "reason": r.reason,
                 "detail": r.detail[:500], "max_pixels": r.max_pixels}
                for r in records
            ],
        )

    def remove_skips(self, ids: Sequence[str]) -> None:
        with self._lock:
            for start in range(0, len(ids), PAGE):
                self.skips.delete(ids=list(ids[start : start + PAGE]))


def _clean(meta: dict) -> dict:
    """Chroma metadata: drop None values (Chroma cannot store them) and empty lists."""
    return {k: v for k, v in meta.items() if v is not None and v != []}
