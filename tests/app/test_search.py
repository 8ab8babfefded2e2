"""app.search with a tiny model and real ChromaDB: scores, image/composed queries, filters, sorting, duplicates."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from app import search as search_mod
from app.photos import load_photo
from app.search import (
    Filters, QueryError, find_duplicates, indexed_hit, query_vector, search, search_all_of, search_vector,
)
from app.store import photo_id
from data.world import render_photo, sample_photo_specs
from tests.app.conftest import SHORT_SIDE, open_index

CAMERA_PHOTOS = 3


@pytest.fixture(scope="module")
def indexed(world_album_master, tiny_model, tmp_path_factory):
    """The world album plus planted copies and camera EXIF, indexed once: (index, root, info)."""
    master, _ = world_album_master
    root = tmp_path_factory.mktemp("search") / "photos"
    shutil.copytree(master, root)
    originals = sorted(root.rglob("*.jpg"))
    source = originals[0]
    dups = root / "dups"
    dups.mkdir()
    exact = dups / "exact-copy.jpg"
    shutil.copy(source, exact)
    with Image.open(source) as im:
        im.save(dups / "resaved.jpg", quality=70, exif=im.info.get("exif", b""))
        upright = ImageOps.exif_transpose(im)
        upright.resize((upright.width // 2, upright.height // 2)).save(dups / "resized.jpg", quality=85)
    cams = []
    (root / "camera").mkdir()
    for n, spec in enumerate(sample_photo_specs(CAMERA_PHOTOS, seed=77, short_side=SHORT_SIDE)):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
        exif.get_ifd(0x8769)[0x9003] = spec.date.strftime("%Y:%m:%d %H:%M:%S")
        target = root / "camera" / f"cam{n}.jpg"
        render_photo(spec).save(target, quality=90, exif=exif)
        cams.append(target)
    index = open_index(tmp_path_factory.mktemp("db"), tiny_model)
    report = index.update([root])
    assert report.added == len(originals) + 3 + CAMERA_PHOTOS
    info = {"source": source, "exact": exact, "resaved": dups / "resaved.jpg", "resized": dups / "resized.jpg",
            "cameras": cams, "originals": originals}
    return index, root, info


def all_records(index):
    ids, metas, vecs = [], [], []
    for page_ids, page_metas, page_vecs in index.store.iter_records(include_vectors=True):
        ids += page_ids
        metas += page_metas
        vecs.append(page_vecs)
    return ids, metas, np.concatenate(vecs)


def brute_force(index, vector, k, keep=lambda m: True):
    ids, metas, vecs = all_records(index)
    scores = vecs @ vector
    order = [i for i in np.argsort(-scores) if keep(metas[i])][:k]
    return [metas[i]["path"] for i in order], [float(scores[i]) for i in order]


def assert_matches_brute_force(hits, index, vector, k, keep=lambda m: True):
    """Same scores rank by rank as exhaustive search, and every hit is a photo with that score.

    Photos with equal vectors (the planted exact copy) tie, and ties may come in either order."""
    paths, scores = brute_force(index, vector, k, keep)
    _, metas, vecs = all_records(index)
    true_score = {m["path"]: float(v @ vector) for m, v in zip(metas, vecs)}
    assert [h.score for h in hits] == pytest.approx(scores, abs=1e-5)
    assert [true_score[h.path] for h in hits] == pytest.approx(scores, abs=1e-5)
    assert len({h.path for h in hits}) == len(hits) == len(paths)


def test_text_search_scores_are_cosine_similarities(indexed, tiny_model):
    index, _, _ = indexed
    hits = search(index, text="a red circle on the left", k=5)
    q = tiny_model.embed_texts(["a red circle on the left"])[0]
    assert_matches_brute_force(hits, index, q, 5)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_image_query_finds_the_photo_itself(indexed):
    index, _, info = indexed
    target = info["originals"][5]
    by_path = search(index, image=str(target), k=3)
    assert by_path[0].path == str(target) and by_path[0].score > 0.9999
    # An uploaded image (a PIL image with its EXIF, not yet upright) gives the same answer.
    with Image.open(target) as upload:
        by_upload = search(index, image=upload, k=3)
    assert [h.path for h in by_upload] == [h.path for h in by_path]
    assert by_upload[0].score == pytest.approx(by_path[0].score, abs=1e-5)


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_composed_image_and_text_query(indexed, tiny_model, weight):
    """Photo + text: the normalised sum of the photo's and the (weighted) text's embeddings."""
    index, _, info = indexed
    target = info["originals"][2]
    hits = search(index, text="the same photo at night", image=str(target), k=4, text_weight=weight)
    photo = tiny_model.embed_images([load_photo(target)[0]])[0]
    text = tiny_model.embed_texts(["the same photo at night"])[0]
    q = (photo + weight * text) / np.linalg.norm(photo + weight * text)
    assert_matches_brute_force(hits, index, q, 4)
    assert not np.allclose(q, query_vector(index, image=str(target)), atol=1e-3)  # the text changed the query


def test_min_score_threshold(indexed):
    index, _, _ = indexed
    hits = search(index, text="a blue star", k=10)
    cut = hits[2].score
    kept = search(index, text="a blue star", k=10, min_score=cut)
    assert [h.path for h in kept] == [h.path for h in hits if h.score >= cut] and len(kept) >= 3
    assert search(index, text="a blue star", k=10, min_score=1.01) == []


def test_date_filters(indexed):
    index, _, _ = indexed
    _, metas, _ = all_records(index)
    dates = sorted(m["taken"] for m in metas)
    middle = dt.datetime.fromtimestamp(dates[len(dates) // 2]).date()
    later = middle + dt.timedelta(days=400)
    n = len(metas)
    hits = search(index, text="a photo", k=n, filters=Filters(after=middle.isoformat(), before=later.isoformat()))
    lo = dt.datetime(middle.year, middle.month, middle.day).timestamp()
    hi = dt.datetime(later.year, later.month, later.day).timestamp()
    expected = {m["path"] for m in metas if lo <= m["taken"] < hi}
    assert {h.path for h in hits} == expected and 0 < len(expected) < n
    assert all(lo <= h.taken < hi for h in hits)
    # Dates as date objects and epoch seconds mean the same.
    same = search(index, text="a photo", k=n, filters=Filters(after=middle, before=hi))
    assert {h.path for h in same} == expected
    with pytest.raises(QueryError, match="YYYY-MM-DD"):
        search(index, text="a photo", filters=Filters(after="last tuesday"))


def test_folder_and_camera_filters(indexed):
    index, root, info = indexed
    _, metas, _ = all_records(index)
    under_b = {m["path"] for m in metas if m["path"].startswith(str(root / "b") + "/")}
    hits = search(index, text="a photo", k=100, filters=Filters(folder=str(root / "b")))
    assert {h.path for h in hits} == under_b and len(under_b) == 8  # b/ holds only b/c/
    cams = {str(p) for p in info["cameras"]}
    for name in ("canon", "Canon EOS R5", " CANON EOS R5 "):
        assert {h.path for h in search(index, text="a photo", k=100, filters=Filters(camera=name))} == cams
    assert search(index, text="a photo", k=100, filters=Filters(camera="nikon")) == []
    assert all(h.metadata["camera"] == "Canon EOS R5" for h in search(index, text="x", filters=Filters(camera="canon")))


def test_filtered_search_is_exact_when_chroma_filters(indexed, tiny_model, monkeypatch):
    """Few nearest photos pass the filter, so Chroma's own filtered search runs: same answer as brute force."""
    index, root, _ = indexed
    monkeypatch.setattr(search_mod, "OVERFETCH", 1)
    monkeypatch.setattr(search_mod, "MIN_OVERFETCH", 1)
    q = tiny_model.embed_texts(["a green triangle"])[0]
    folder = str(root / "camera")
    hits = search_vector(index, q, k=2, filters=Filters(folder=folder))
    assert_matches_brute_force(hits, index, q, 2, keep=lambda m: folder in m["folders"])
    assert all(folder in h.path for h in hits)


PARTS = ["a red circle", "a small blue square", "a green star"]


def test_search_all_of_scores_each_photo_by_the_mean_cosine_of_the_parts(indexed, tiny_model):
    """Brute force over every stored vector gives the same top k and scores (the candidate pool covers
    this album), and the order differs from one embedding of the joined description."""
    index, _, _ = indexed
    hits = search_all_of(index, PARTS, k=6)
    ids, metas, vecs = all_records(index)
    mean = (vecs @ tiny_model.embed_texts(PARTS).T).mean(axis=1)
    order = np.argsort(-mean)[:6]
    assert [h.path for h in hits] == [metas[i]["path"] for i in order]
    assert [h.score for h in hits] == pytest.approx([float(mean[i]) for i in order], abs=1e-5)
    joined = search(index, text="a red circle, a small blue square and a green star", k=6)
    assert [h.path for h in joined] != [h.path for h in hits]
    # One part is a plain text search; min_score drops what scores below it.
    assert [h.path for h in search_all_of(index, PARTS[:1], k=5)] == [h.path for h in search(index, text=PARTS[0], k=5)]
    cut = hits[2].score
    assert [h.path for h in search_all_of(index, PARTS, k=6, min_score=cut)] == [h.path for h in hits[:3]]


def test_search_all_of_filters_and_errors(indexed, monkeypatch):
    index, root, info = indexed
    folder = str(root / "camera")
    hits = search_all_of(index, PARTS, k=10, filters=Filters(folder=folder))
    assert {h.path for h in hits} == {str(p) for p in info["cameras"]}
    # A pool of one photo per part still returns only photos that pass the filter.
    monkeypatch.setattr(search_mod, "OVERFETCH", 1)
    monkeypatch.setattr(search_mod, "MIN_OVERFETCH", 1)
    few = search_all_of(index, PARTS, k=1, filters=Filters(folder=folder))
    assert len(few) == 1 and few[0].path in {str(p) for p in info["cameras"]}
    for bad in ([], ["  "], [None]):
        with pytest.raises(QueryError, match="at least one thing"):
            search_all_of(index, bad)
    with pytest.raises(QueryError, match="k must be"):
        search_all_of(index, PARTS, k=0)


def test_sort_by_date_after_threshold(indexed):
    index, _, _ = indexed
    relevance = search(index, text="a yellow square", k=8)
    newest = search(index, text="a yellow square", k=8, sort="newest")
    oldest = search(index, text="a yellow square", k=8, sort="oldest")
    assert {h.path for h in newest} == {h.path for h in relevance} == {h.path for h in oldest}
    assert [h.taken for h in newest] == sorted((h.taken for h in relevance), reverse=True)
    assert [h.path for h in oldest] == [h.path for h in reversed(newest)] or len({h.taken for h in newest}) < 8
    cut = relevance[3].score
    kept = search(index, text="a yellow square", k=8, min_score=cut, sort="newest")
    assert len(kept) == sum(h.score >= cut for h in relevance) >= 4
    assert [h.taken for h in kept] == sorted((h.taken for h in kept), reverse=True)


def test_hit_json_and_query_errors(indexed, tmp_path):
    index, _, _ = indexed
    hit = search(index, text="a photo", k=1)[0]
    out = hit.to_json()
    assert out["path"] == hit.path and out["score"] == pytest.approx(hit.score, abs=1e-6)
    assert dt.datetime.fromisoformat(out["date"]).timestamp() == pytest.approx(hit.taken, abs=1)
    assert out["width"] > 0 and out["date_source"] == "exif"
    with pytest.raises(QueryError):
        search(index)
    with pytest.raises(QueryError):
        search(index, text="   ")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(QueryError, match="not-an-image"):
        search(index, image=str(bad))
    with pytest.raises(QueryError):
        search(index, text="x", k=0)
    with pytest.raises(QueryError):
        search(index, text="x", sort="random")


def test_exact_and_near_duplicates(indexed):
    index, _, info = indexed
    ids, metas, vecs = all_records(index)
    threshold = 0.9998
    planted = [str(info[k]) for k in ("source", "exact", "resaved", "resized")]
    pos = {m["path"]: n for n, m in enumerate(metas)}
    sims = vecs @ vecs.T
    planted_idx = [pos[p] for p in planted]
    # Preconditions (so a failure below is about grouping, not the tiny model): copies are close,
    # every other pair is not.
    assert min(sims[a, b] for a in planted_idx for b in planted_idx) >= threshold
    others = [n for n in range(len(metas)) if n not in planted_idx]
    assert max(sims[a, b] for a in range(len(metas)) for b in others if a != b) < threshold

    exact, near = find_duplicates(index, near_threshold=threshold)
    assert [g.paths for g in exact] == [sorted(planted[:2])]
    assert [g.paths for g in near] == [sorted(planted)]
    assert near[0].score >= threshold and exact[0].score == 1.0
    assert all(g.kind == "exact" for g in exact) and all(g.kind == "near" for g in near)


def test_indexed_hit_is_the_search_record_of_a_known_photo(indexed, tmp_path):
    index, root, _ = indexed
    photo = sorted(root.rglob("*.jpg"))[2]
    top = search(index, image=str(photo), k=1)[0]
    known = indexed_hit(index, str(photo))
    assert (known.id, known.path, known.taken, known.metadata) == (top.id, top.path, top.taken, top.metadata)
    assert known.score == 1.0
    with pytest.raises(QueryError, match="not in the index"):
        indexed_hit(index, str(tmp_path / "never-indexed.jpg"))
