"""Search a PhotoIndex: text, image ("more like this") and composed image+text queries, and duplicates.

    from app.index import PhotoIndex
    from app.search import Filters, search, find_duplicates
    index = PhotoIndex.open(db=..., model=...)
    hits = search(index, text="a dog on the beach", k=10, min_score=0.2,
                  filters=Filters(after="2023-01-01", folder="/photos/trips"), sort="newest")
    for hit in hits:
        print(hit.score, hit.path, hit.date)

Scores are cosine similarities (1 - Chroma's cosine distance), higher is closer. Filters run inside
Chroma (`where` on the stored metadata), so the top k are the top k among the photos that pass.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from app.config import SearchConfig
from app.photos import SkipPhoto, load_photo, prepare_image
from app.store import STORE_BATCH

SORTS = ("relevance", "newest", "oldest")
# Filtered queries first look among the OVERFETCH * k (at least MIN_OVERFETCH) nearest photos.
OVERFETCH = 10
MIN_OVERFETCH = 100


class QueryError(ValueError):
    """A query that cannot run (no text and no image, unreadable query image, bad date...)."""


def parse_date(value) -> float | None:
    """Epoch seconds for a date filter: "YYYY-MM-DD" (local midnight), a date/datetime, or a number."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).timestamp()
    try:
        day = dt.date.fromisoformat(str(value))
    except ValueError:
        raise QueryError(f"dates are YYYY-MM-DD, got {value!r}") from None
    return dt.datetime(day.year, day.month, day.day).timestamp()


@dataclass
class Filters:
    """Which photos a query may return.

    after: taken on or after this date (YYYY-MM-DD, date, datetime or epoch seconds).
    before: taken before this date (a day given as YYYY-MM-DD is excluded).
    folder: only photos in this folder or its subfolders (absolute path, or relative to the cwd).
    camera: only this camera: make, model or "make model", case-insensitive ("canon", "EOS R5").
    """

    after: object = None
    before: object = None
    folder: str | None = None
    camera: str | None = None

    def where(self) -> dict | None:
        """The Chroma `where` clause for these filters (None when there are none)."""
        clauses = []
        after, before = parse_date(self.after), parse_date(self.before)
        if after is not None:
            clauses.append({"taken": {"$gte": after}})
        if before is not None:
            clauses.append({"taken": {"$lt": before}})
        if self.folder:
            clauses.append({"folders": {"$contains": self._folder()}})
        if self.camera:
            clauses.append({"cameras": {"$contains": self.camera.strip().lower()}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def _folder(self) -> str:
        """The folder filter as stored in records' "folders" metadata (absolute, no trailing separator)."""
        return os.path.abspath(os.path.expanduser(self.folder)).rstrip(os.sep) or os.sep

    def matches(self, meta: dict) -> bool:
        """The same test as where(), on one record's metadata (for filtering results in Python)."""
        after, before = parse_date(self.after), parse_date(self.before)
        taken = float(meta.get("taken", 0.0))
        if after is not None and taken < after:
            return False
        if before is not None and taken >= before:
            return False
        if self.folder:
            if self._folder() not in (meta.get("folders") or ()):
                return False
        if self.camera and self.camera.strip().lower() not in (meta.get("cameras") or ()):
            return False
        return True


@dataclass
class Hit:
    """One search result."""

    id: str
    path: str
    score: float
    taken: float
    metadata: dict = field(repr=False)

    @property
    def date(self) -> str:
        """When the photo was taken, ISO 8601 in local time."""
        return format_date(self.taken)

    def to_json(self) -> dict:
        m = self.metadata
        out = {
            "path": self.path,
            "score": float(self.score),
            "date": self.date,
            "date_source": m.get("date_source", ""),
            "folder": m.get("folder", ""),
            "width": m.get("width"),
            "height": m.get("height"),
            "camera": m.get("camera", ""),
            "content_hash": m.get("content_hash", ""),
        }
        if "gps_lat" in m and "gps_lon" in m:
            out["gps"] = [m["gps_lat"], m["gps_lon"]]
        return out


def format_date(epoch: float) -> str:
    return dt.datetime.fromtimestamp(float(epoch)).astimezone().isoformat(timespec="seconds")


def hit_from_record(record_id: str, score: float, meta: dict) -> Hit:
    """A stored record (id, its metadata) as a Hit with ``score``."""
    return Hit(id=record_id, path=meta["path"], score=score, taken=float(meta.get("taken", 0.0)), metadata=meta)


def indexed_hit(index, path: str, score: float = 1.0) -> Hit:
    """The index's record of the photo at ``path`` as a Hit (to hand a known photo to the answerer)."""
    from app.store import photo_id

    record_id = photo_id(os.path.abspath(path))
    found = index.store.get([record_id])
    if record_id not in found:
        raise QueryError(f"{path} is not in the index")
    return hit_from_record(record_id, score, found[record_id])


def query_image(index, image) -> Image.Image:
    """A query image made ready for the model exactly as indexing does: a path or a PIL image."""
    if isinstance(image, Image.Image):
        return prepare_image(image.copy(), index.config.max_side)
    try:
        img, _ = load_photo(image, max_pixels=index.config.max_pixels, max_side=index.config.max_side)
    except SkipPhoto as e:
        raise QueryError(f"cannot use {image} as a query image: {e}") from None
    return img


def query_vector(index, text: str | None = None, image=None,
                 text_weight: float = SearchConfig.composed_text_weight) -> np.ndarray:
    """(dim,) query embedding: text alone, image alone, or a composed image+text query.

    A composed query ("like this photo, but on a white background") is the normalised sum of the photo's
    and the text's embeddings, the text weighted by ``text_weight`` (SearchConfig.composed_text_weight;
    a model trained on composed queries can take them whole: CafeModel.embed_multimodal). Both the photo
    and the text then move the results.
    """
    text = text.strip() if isinstance(text, str) else None
    if not text and image is None:
        raise QueryError("give a text, an image, or both")
    model = index.model
    if image is None:
        return np.asarray(model.embed_texts([text])[0], dtype=np.float32)
    picture = np.asarray(model.embed_images([query_image(index, image)])[0], dtype=np.float32)
    if not text:
        return picture
    combined = picture + text_weight * np.asarray(model.embed_texts([text])[0], dtype=np.float32)
    return combined / max(float(np.linalg.norm(combined)), 1e-12)


def split_at(hits: Sequence[Hit], cutoff: float | None) -> tuple[list[Hit], list[Hit]]:
    """(hits scoring at least ``cutoff``, the rest): what is shown, and what is "below the cutoff"."""
    if cutoff is None:
        return list(hits), []
    return [h for h in hits if h.score >= cutoff], [h for h in hits if h.score < cutoff]


def search_vector(
    index, vector: np.ndarray, k: int = SearchConfig.k, min_score: float | None = None,
    filters: Filters | None = None, sort: str = "relevance",
) -> list[Hit]:
    """Top-k photos for a query vector, those below min_score dropped, then ordered by `sort`.

    sort: "relevance" (highest score first), "newest" or "oldest" (by date taken, among the top k).
    """
    if sort not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if k < 1:
        raise QueryError("k must be at least 1")
    store = index.store
    where = filters.where() if filters else None
    if where is None:
        found = store.query(vector, k)
    else:
        # Chroma's filtered search scans every matching record (hundreds of ms at 100k photos), while
        # its plain HNSW search takes milliseconds: look among the nearest photos first, and ask Chroma
        # to filter only when too few of them pass. Exact either way: if k of the nearest M pass, no
        # photo outside those M can rank above them.
        wide = store.query(vector, max(k * OVERFETCH, MIN_OVERFETCH))
        passing = [r for r in wide if filters.matches(r[2])]
        found = passing[:k] if len(passing) >= k or len(wide) >= store.count() else store.query(vector, k, where)
    hits = [hit_from_record(i, s, m) for i, s, m in found]
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    if sort == "newest":
        hits.sort(key=lambda h: (-h.taken, -h.score))
    elif sort == "oldest":
        hits.sort(key=lambda h: (h.taken, -h.score))
    return hits


def search(
    index, text: str | None = None, image=None, *, k: int = SearchConfig.k, min_score: float | None = None,
    filters: Filters | None = None, sort: str = "relevance", text_weight: float = SearchConfig.composed_text_weight,
) -> list[Hit]:
    """Search the index with a text, an image (path or PIL image) or both (composed query).

    Returns at most k hits with score >= min_score that pass `filters`, ordered by `sort`.
    """
    vector = query_vector(index, text, image, text_weight)
    return search_vector(index, vector, k=k, min_score=min_score, filters=filters, sort=sort)


def search_all_of(
    index, parts: Sequence[str], *, k: int = SearchConfig.k, min_score: float | None = None,
    filters: Filters | None = None,
) -> list[Hit]:
    """Photos that show every one of several things ("a red car", "a dog"): a conjunctive text query.

    Each part is embedded on its own; a photo's score is the mean of its cosine similarities to the
    parts, so a photo must match all of them to rank high (one embedding of "a red car and a dog"
    pools both into a single vector). Candidates are the union of each part's nearest
    max(OVERFETCH * k, MIN_OVERFETCH) photos that pass `filters`, scored with their stored vectors.
    """
    parts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    if not parts:
        raise QueryError("give at least one thing to look for")
    if k < 1:
        raise QueryError("k must be at least 1")
    part_vectors = np.asarray(index.model.embed_texts(parts), dtype=np.float32)
    pool = max(k * OVERFETCH, MIN_OVERFETCH)
    candidates: dict[str, dict] = {}
    for vector in part_vectors:
        for hit in search_vector(index, vector, k=pool, filters=filters):
            candidates.setdefault(hit.id, hit.metadata)
    stored = index.store.vectors(list(candidates))
    ids = [i for i in candidates if i in stored]  # a photo deleted meanwhile drops out
    if not ids:
        return []
    scores = (np.stack([stored[i] for i in ids]) @ part_vectors.T).mean(axis=1)
    hits = [hit_from_record(ids[n], float(scores[n]), candidates[ids[n]]) for n in np.argsort(-scores, kind="stable")[:k]]
    return [h for h in hits if min_score is None or h.score >= min_score]


# --------------------------------------------------------------------------------------------- duplicates


class _Components:
    """Union-find over 0..n-1 (path halving): which photos a chain of near-duplicate links joins."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb



@dataclass
class DuplicateGroup:
    """Photos that are copies of each other. kind "exact": same bytes; "near": embeddings within threshold.

    score: 1.0 for exact groups; for near groups the lowest similarity among the links that joined it.
    """

    kind: str
    paths: list[str]
    score: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "paths": self.paths, "score": float(self.score)}


def find_duplicates(
    index, near_threshold: float = SearchConfig.near_duplicate_threshold, neighbours: int = 8
) -> tuple[list[DuplicateGroup], list[DuplicateGroup]]:
    """(exact groups, near groups) over the whole index.

    Exact: same content hash. Near: connected components of photo pairs whose cosine similarity is
    >= near_threshold, found with each photo's `neighbours` nearest neighbours in Chroma; pairs of
    exact copies alone do not make a near group (they are already reported as exact).
    """
    store = index.store
    ids: list[str] = []
    paths: list[str] = []
    hashes: list[str] = []
    vector_pages = []
    for page_ids, metas, vecs in store.iter_records(include_vectors=True):
        ids.extend(page_ids)
        paths.extend(m["path"] for m in metas)
        hashes.extend(m.get("content_hash", "") for m in metas)
        vector_pages.append(vecs)
    if not ids:
        return [], []
    position = {record_id: n for n, record_id in enumerate(ids)}

    by_hash: dict[str, list[int]] = {}
    for n, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(n)
    exact = [
        DuplicateGroup("exact", sorted(paths[n] for n in members), 1.0)
        for members in by_hash.values()
        if len(members) > 1
    ]

    vectors = np.concatenate(vector_pages)
    n_results = min(neighbours + 1, len(ids))
    linked: list[tuple[int, int, float]] = []
    for start in range(0, len(ids), STORE_BATCH):
        rows = store.query_many(vectors[start : start + STORE_BATCH], n_results)
        for row, neighbours_of_a in enumerate(rows):
            a = start + row
            for nbr, score, _ in neighbours_of_a:
                b = position.get(nbr)
                if b is None or b == a or score < near_threshold:
                    continue
                if hashes[a] and hashes[a] == hashes[b]:
                    continue  # exact copies: reported above
                linked.append((a, b, score))
    components = _Components(len(ids))
    for a, b, _ in linked:
        components.join(a, b)
    weakest: dict[int, float] = {}
    for a, b, score in linked:
        root = components.find(a)
        weakest[root] = min(weakest.get(root, 1.0), score)
    find = components.find

    groups: dict[int, list[int]] = {}
    for n in range(len(ids)):
        groups.setdefault(find(n), []).append(n)
    near = [
        DuplicateGroup("near", sorted(paths[n] for n in members), weakest.get(root, 1.0))
        for root, members in groups.items()
        if len(members) > 1
    ]
    exact.sort(key=lambda g: g.paths)
    near.sort(key=lambda g: g.paths)
    return exact, near
