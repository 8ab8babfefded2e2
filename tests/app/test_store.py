"""app.store with real ChromaDB (embedded, and a `chroma run` server) and plain numpy vectors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from app.store import (
    SCHEMA_VERSION,
    ChromaLocation,
    ModelMismatchError,
    NotIndexedError,
    PhotoStore,
    SkipRecord,
    StoreError,
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


def write_v1_collection(db, fingerprint: str = "fp-old", n: int = 5):
    """A database as schema 1 wrote it (fingerprint, dim, model, schema 1; no image_crops), through Chroma
    itself: (ids, vectors)."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(
        collection_name(fingerprint), embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
        metadata={"fingerprint": fingerprint, "dim": DIM, "model": "old-model", "schema": 1, "kind": "cafe-photos"})
    ids, vectors, metas = records(n, seed=5)
    col.upsert(ids=ids, embeddings=vectors, metadatas=[{k: v for k, v in m.items() if v is not None} for m in metas])
    return ids, vectors


def reopened_metadata(db, fingerprint: str) -> dict:
    """The collection's metadata as a fresh process would read it (the system cache dropped)."""
    location = ChromaLocation(db_dir=str(db))
    return dict(location.reconnect().get_collection(collection_name(fingerprint)).metadata)


def test_new_collections_record_the_schema_and_crops(tmp_path):
    store = PhotoStore(ChromaLocation(db_dir=str(tmp_path / "db")), "fp-new", DIM, "m", create=True, image_crops="base")
    assert SCHEMA_VERSION == 2
    assert reopened_metadata(tmp_path / "db", "fp-new") == {
        "fingerprint": "fp-new", "dim": DIM, "model": "m", "image_crops": "base", "schema": 2, "kind": "cafe-photos"}
    assert store.count() == 0


@pytest.mark.parametrize("create", [False, True])
def test_a_v1_collection_is_migrated_step_by_step(tmp_path, create):
    """A schema-1 database (built with native crops) opens as schema 2, its records untouched, for a search
    and for an index run alike."""
    db = tmp_path / "db"
    ids, vectors = write_v1_collection(db)
    store = PhotoStore(ChromaLocation(db_dir=str(db)), "fp-old", DIM, "old-model", create=create)
    meta = reopened_metadata(db, "fp-old")
    assert meta["schema"] == 2 and meta["image_crops"] == "native"
    assert {k: meta[k] for k in ("fingerprint", "dim", "model", "kind")} == {
        "fingerprint": "fp-old", "dim": DIM, "model": "old-model", "kind": "cafe-photos"}
    assert store.count() == 5 and store.query(vectors[3], k=1)[0][0] == ids[3]
    (model,) = indexed_models(store.client)
    assert (model.schema, model.image_crops) == (2, "native")
    PhotoStore(ChromaLocation(db_dir=str(db)), "fp-old", DIM, "old-model")  # a second open changes nothing
    assert reopened_metadata(db, "fp-old") == meta


def test_migrations_run_one_step_at_a_time(tmp_path, monkeypatch):
    """ensure_version walks the ladder from the collection's version: every step runs once, in order, and
    each is written before the next (a crash between steps resumes from the last one written)."""
    import app.store as store_module

    db = tmp_path / "db"
    write_v1_collection(db)
    seen = []

    def v2_to_v3(meta):
        seen.append(("2->3", meta["schema"], meta["image_crops"]))
        return {**meta, "v3": True}

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(store_module.MIGRATIONS, 2, v2_to_v3)
    PhotoStore(ChromaLocation(db_dir=str(db)), "fp-old", DIM, "old-model")
    assert seen == [("2->3", 2, "native")]
    meta = reopened_metadata(db, "fp-old")
    assert (meta["schema"], meta["image_crops"], meta["v3"]) == (3, "native", True)


def test_a_collection_of_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "db"
    write_v1_collection(db)
    location = ChromaLocation(db_dir=str(db))
    col = location.connect().get_collection(collection_name("fp-old"))
    col.modify(metadata={**col.metadata, "schema": SCHEMA_VERSION + 1})
    for create in (False, True):
        with pytest.raises(StoreError) as info:
            PhotoStore(ChromaLocation(db_dir=str(db)), "fp-old", DIM, "old-model", create=create)
        message = str(info.value)
        assert f"schema {SCHEMA_VERSION + 1}" in message and "newer version" in message and "update the app" in message
    assert reopened_metadata(db, "fp-old")["schema"] == SCHEMA_VERSION + 1  # left as it was


def test_another_crop_setting_is_refused_with_the_setting_to_use(tmp_path):
    """Same model, vectors embedded with other crops (another fingerprint): the message names both settings."""
    location = ChromaLocation(db_dir=str(tmp_path / "db"))
    store = PhotoStore(location, "fp-base", DIM, "tiny:x", create=True, image_crops="base")
    ids, vectors, metas = records(3)
    store.upsert(ids, vectors, metas)
    with pytest.raises(ModelMismatchError) as info:
        PhotoStore(location, "fp-native", DIM, "tiny:x", image_crops="native")
    message = str(info.value)
    assert "--image-crops base" in message and "not native" in message
    assert "python -m app index PHOTOS_DIR --db DB_DIR --model tiny:x" in message


def test_missing_folder_is_not_created_to_read(tmp_path):
    location = ChromaLocation(db_dir=str(tmp_path / "nowhere"))
    with pytest.raises(NotIndexedError, match="does not exist"):
        PhotoStore(location, "fp", DIM, "m")
    with pytest.raises(NotIndexedError):
        PhotoStore.preflight(location, "m")
    assert not (tmp_path / "nowhere").exists()
    PhotoStore(location, "fp", DIM, "m", create=True)  # indexing creates it
    assert (tmp_path / "nowhere" / "chroma.sqlite3").is_file()
