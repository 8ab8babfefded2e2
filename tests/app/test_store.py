"""app.store with real ChromaDB (embedded, and a `chroma run` server) and plain numpy vectors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from app.store import (
    ChromaLocation,
    ModelMismatchError,
    NotIndexedError,
    PhotoStore,
    SkipRecord,
    collection_name,
    indexed_models,
    photo_id,
    shard_of,
)

DIM = 8


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, DIM)))
    paths = [f"/photos/{'a' if i % 2 else 'b'}/p{i}.jpg" for i in range(n)]
    metas = [
        {"path": p, "size": 100 + i, "mtime_ns": 10**18 + i, "content_hash": f"h{i}", "taken": float(i),
         "folders": [p.rsplit("/", 1)[0], "/photos"], "gps_lat": None}
        for i, p in enumerate(paths)
    ]
    return [photo_id(p) for p in paths], vectors, metas


def test_upsert_query_cosine_scores_and_idempotence(tmp_path):
    store = PhotoStore(ChromaLocation(db_dir=str(tmp_path / "db")), "fp-a", DIM, "model-a", create=True)
    ids, vectors, metas = records(50)
    store.upsert(ids, vectors, metas)
    store.upsert(ids, vectors, metas)  # a rerun after a crash writes the same records again
    assert store.count() == 50

    query = unit(np.random.default_rng(9).standard_normal((1, DIM)))[0]
    hits = store.query(query, k=5)
    expected = np.argsort(-(vectors @ query))[:5]
    assert [h[0] for h in hits] == [ids[i] for i in expected]
    assert [h[1] for h in hits] == pytest.approx([float(vectors[i] @ query) for i in expected], abs=1e-5)
    assert "gps_lat" not in hits[0][2]  # None values are dropped, not stored

    filtered = store.query(query, k=50, where={"taken": {"$gte": 40.0}})
    assert sorted(h[2]["taken"] for h in filtered) == [float(i) for i in range(40, 50)]
    assert {h[0] for h in store.query(query, k=50, where={"folders": {"$contains": "/photos/a"}})} == set(ids[1::2])

    store.delete(ids[:10])
    assert store.count() == 40 and set(store.scan()) == set(ids[10:])
    got = store.vectors([ids[10], "missing"])
    assert list(got) == [ids[10]] and np.allclose(got[ids[10]], vectors[10], atol=1e-6)


def test_collection_records_model_and_cosine_space(tmp_path):
    location = ChromaLocation(db_dir=str(tmp_path / "db"))
    store = PhotoStore(location, "cafe-0123", DIM, "tiny-model", create=True)
    col = store.collection
    assert col.metadata["fingerprint"] == "cafe-0123" and col.metadata["dim"] == DIM
    assert col.metadata["model"] == "tiny-model"
    assert col.configuration["hnsw"]["space"] == "cosine"
    assert col.configuration.get("embedding_function") is None
    (model,) = indexed_models(store.client)
    assert (model.fingerprint, model.dim, model.count) == ("cafe-0123", DIM, 0)


def test_fingerprint_guard(tmp_path):
    location = ChromaLocation(db_dir=str(tmp_path / "db"))
    with pytest.raises(NotIndexedError, match="python -m app index"):
        PhotoStore(location, "fp-a", DIM, "model-a", create=False)
    store = PhotoStore(location, "fp-a", DIM, "model-a", create=True)
    ids, vectors, metas = records(3)
    store.upsert(ids, vectors, metas)

    with pytest.raises(ModelMismatchError) as info:
        PhotoStore(location, "fp-b", DIM, "model-b", create=False)
    message = str(info.value)
    assert "model-a" in message and "fp-a" in message and "model-b" in message
    assert "python -m app index PHOTOS_DIR --db DB_DIR --model model-b" in message

    with pytest.raises(ModelMismatchError, match="another model"):
        store.upsert(ids[:1], np.ones((1, DIM + 1), np.float32), metas[:1])
    with pytest.raises(ModelMismatchError):
        store.query(np.ones(DIM * 2, np.float32), k=1)

    # Indexing with another model makes its own collection; the first one is untouched.
    other = PhotoStore(location, "fp-b", 2 * DIM, "model-b", create=True)
    assert other.count() == 0 and store.count() == 3
    assert {m.fingerprint for m in indexed_models(store.client)} == {"fp-a", "fp-b"}


def test_collection_names_are_valid_and_distinct():
    names = {collection_name(fp) for fp in ["cafe-1", "cafe/1", "cafe 1", "../..", "ü" * 50, "a" * 600]}
    assert len(names) == 6
    assert all(3 <= len(n) <= 512 and n[0].isalnum() and n[-1].isalnum() for n in names)


def test_skip_list_roundtrip(tmp_path):
    store = PhotoStore(ChromaLocation(db_dir=str(tmp_path / "db")), "fp", DIM, create=True)
    records_ = [SkipRecord(photo_id(f"/p/{i}.jpg"), f"/p/{i}.jpg", i, 10 + i, "corrupt", "bad", 100) for i in range(3)]
    store.add_skips(records_)
    store.add_skips(records_[:1])
    assert store.skipped() == {r.id: r for r in records_}
    store.remove_skips([records_[0].id])
    assert set(store.skipped()) == {r.id for r in records_[1:]}
    assert store.count() == 0  # skips live apart from the photos


def test_ids_and_shards_are_stable():
    assert photo_id("/a/b.jpg") == photo_id("/a/b.jpg") != photo_id("/a/c.jpg")
    ids = [photo_id(f"/p/{i}.jpg") for i in range(400)]
    counts = np.bincount([shard_of(i, 4) for i in ids], minlength=4)
    assert counts.sum() == 400 and counts.min() > 60  # a fair split


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from app.store import ChromaLocation, PhotoStore, photo_id
    store = PhotoStore(ChromaLocation(db_dir=sys.argv[1]), "fp", 8, create=True)
    rng = np.random.default_rng(1)
    for b in range(int(sys.argv[2])):
        v = rng.standard_normal((8, 8)).astype(np.float32)
        paths = [f"/p/{b}/{i}.jpg" for i in range(8)]
        store.upsert([photo_id(p) for p in paths], v,
                     [{"path": p, "size": 1, "mtime_ns": 1, "taken": float(b)} for p in paths])
    print("done", store.count())
    """
)


def test_reads_stay_correct_while_another_process_writes(tmp_path):
    """An embedded reader opened before another process writes still answers, and sees the new records."""
    db = str(tmp_path / "db")
    reader = PhotoStore(ChromaLocation(db_dir=db), "fp", DIM, create=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, db, "150"], stdout=subprocess.PIPE, text=True)
    queries = 0
    query = np.ones(DIM, np.float32)
    while writer.poll() is None:
        hits = reader.query(query, k=5, where={"taken": {"$gte": 0.0}})
        assert all(h[2]["path"].startswith("/p/") for h in hits)
        queries += 1
    assert writer.returncode == 0 and writer.stdout.read().strip() == "done 1200"
    assert queries > 0
    # After the writer is done, a long-lived reader sees all of it: count, filters, vectors.
    assert reader.count() == 1200
    assert len(reader.query(query, k=2000, where={"taken": {"$gte": 100.0}})) == 400
    assert len(reader.scan()) == 1200
    pages = list(reader.iter_records(include_vectors=True))
    assert sum(len(ids) for ids, _, _ in pages) == 1200


@pytest.mark.slow
def test_chroma_server(chroma_server, tmp_path):
    host, port = chroma_server
    location = ChromaLocation(host=host, port=port)
    store = PhotoStore(location, "fp-server", DIM, "model-s", create=True)
    ids, vectors, metas = records(20, seed=3)
    store.upsert(ids, vectors, metas)
    hits = store.query(vectors[7], k=3)
    assert hits[0][0] == ids[7] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ModelMismatchError, match="model-s"):
        PhotoStore(location, "fp-other", DIM, "model-o", create=False)
    again = PhotoStore(location, "fp-server", DIM, "model-s", create=False)
    assert again.count() == 20
