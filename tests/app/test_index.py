"""PhotoIndex with a tiny model and real ChromaDB: incremental runs, skips, rotation, shards, kill -9."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import photos
from app.index import PhotoIndex, parse_shard
from app.search import Filters, search
from app.store import ModelMismatchError, photo_id, shard_of
from data.world import sample_photo_specs, save_photo
from tests.app.conftest import REPO_ROOT, SHORT_SIDE, open_index, small_config, write_world
from tests.app.test_photos import BAD_FILES


def stored_paths(index: PhotoIndex) -> dict[str, dict]:
    return {m["path"]: m for ids, metas, _ in index.store.iter_records() for m in metas}


def test_index_album_metadata_and_unchanged_rerun(tmp_path, album, tiny_model):
    root, specs = album
    index = open_index(tmp_path / "db", tiny_model)
    report = index.update([root])
    assert report.to_json() == {"added": 16, "updated": 0, "removed": 0, "unchanged": 0, "skipped": [], "total": 16}
    assert report.embedded == 16 and index.count() == 16

    stored = stored_paths(index)
    assert set(stored) == {str(p) for p in specs}
    for path, spec in specs.items():
        meta = stored[str(path)]
        assert meta["taken"] == spec.date.timestamp() and meta["date_source"] == "exif"
        assert (meta["width"], meta["height"]) == (spec.width, spec.height)  # upright size
        assert meta["root"] == str(root) and meta["folder"] == str(path.parent)
        assert meta["folders"][0] == str(path.parent) and meta["folders"][-1] == str(root)
        assert meta["size"] == path.stat().st_size and meta["mtime_ns"] == path.stat().st_mtime_ns
        assert meta["content_hash"] == photos.content_hash(path.read_bytes())

    again = index.update([root])
    assert again.to_json() == {"added": 0, "updated": 0, "removed": 0, "unchanged": 16, "skipped": [], "total": 16}
    assert again.read == 0 and again.embedded == 0


def test_incremental_update(tmp_path, album, tiny_model):
    root, specs = album
    index = open_index(tmp_path / "db", tiny_model)
    index.update([root])
    paths = sorted(specs)
    before = index.store.vectors([photo_id(str(p)) for p in paths])

    changed, touched, deleted, moved = paths[0], paths[1], paths[2], paths[3]
    new_spec = sample_photo_specs(1, seed=99, short_side=SHORT_SIDE)[0]
    save_photo(new_spec, changed)                       # new content at an old path
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    deleted.unlink()
    moved_to = root / "moved" / moved.name
    moved_to.parent.mkdir()
    moved.rename(moved_to)                              # same bytes, new path
    added = write_world(root / "new", 1, seed=123)

    report = index.update([root])
    assert report.to_json() == {"added": 2, "updated": 2, "removed": 2, "unchanged": 12, "skipped": [], "total": 16}
    assert report.read == 4 and report.embedded == 2  # the touched and the moved photo reuse their vectors
    assert index.count() == 16
    assert set(stored_paths(index)) == {str(p) for p in paths[4:]} | {str(changed), str(touched), str(moved_to)} | {
        str(p) for p in added}

    after = index.store.vectors([photo_id(str(p)) for p in (changed, touched, moved_to)])
    assert np.allclose(after[photo_id(str(moved_to))], before[photo_id(str(moved))], atol=1e-6)
    assert np.allclose(after[photo_id(str(touched))], before[photo_id(str(touched))], atol=1e-6)
    fresh = tiny_model.embed_images([photos.load_photo(changed)[0]])[0]
    assert float(after[photo_id(str(changed))] @ fresh) > 0.9999
    assert float(before[photo_id(str(changed))] @ fresh) < 0.9999  # the test can fail

    assert index.update([root]).read == 0


def unreadable_possible() -> bool:
    return os.geteuid() != 0  # root reads mode-000 files; test_cli covers that case with setpriv


def test_bad_files_are_skipped_listed_and_not_retried(tmp_path, album, tiny_model):
    root, _ = album
    bad = root / "bad"
    bad.mkdir()
    for name, (data, _) in BAD_FILES.items():
        (bad / name).write_bytes(data)
    expected = {str(bad / name): reason for name, (_, reason) in BAD_FILES.items()}
    if unreadable_possible():
        locked = bad / "locked.jpg"
        shutil.copy(next(iter(album[1])), locked)
        locked.chmod(0)
        expected[str(locked)] = photos.UNREADABLE

    index = open_index(tmp_path / "db", tiny_model, config=small_config(max_pixels=20_000_000))
    report = index.update([root])
    assert {s.path: s.reason for s in report.skipped} == expected
    assert report.added == 16 and report.total == 16 and index.count() == 16
    assert {s.path for s in index.store.skipped().values()} == set(expected)

    again = index.update([root])
    assert again.read == 0 and {s.path: s.reason for s in again.skipped} == expected

    # A fixed file is retried and indexed; a deleted one leaves the skip list.
    fixed = bad / "truncated.jpg"
    save_photo(sample_photo_specs(1, seed=5, short_side=SHORT_SIDE)[0], fixed)
    (bad / "empty.jpg").unlink()
    third = index.update([root])
    assert third.read == 1 and third.added == 1 and third.total == 17
    remaining = {p: r for p, r in expected.items() if p not in (str(fixed), str(bad / "empty.jpg"))}
    assert {s.path: s.reason for s in third.skipped} == remaining
    assert {s.path for s in index.store.skipped().values()} == set(remaining)

    # A photo that breaks after being indexed leaves the index and joins the skip list.
    fixed.write_bytes(b"garbage")
    fourth = index.update([root])
    assert fourth.removed == 1 and fourth.total == 16
    assert str(fixed) in {s.path for s in fourth.skipped}


def test_too_large_skip_is_retried_when_the_cap_is_raised(tmp_path, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(root / "wide.jpg")
    small_cap = open_index(tmp_path / "db", tiny_model, config=small_config(max_pixels=100_000))
    assert [s.reason for s in small_cap.update([root]).skipped] == [photos.TOO_LARGE]
    big_cap = open_index(tmp_path / "db", tiny_model, config=small_config(max_pixels=1_000_000))
    report = big_cap.update([root])
    assert report.added == 1 and report.skipped == []


def test_exif_rotated_photos_embed_like_upright_twins(tmp_path, tiny_model):
    rotated = [s for s in sample_photo_specs(80, seed=11, short_side=SHORT_SIDE) if s.orientation != 1][:4]
    assert rotated, "the sample world stores some photos rotated"
    root = tmp_path / "photos"
    pairs = []
    for spec in rotated:
        r, u = root / f"{spec.id}-rotated.jpg", root / f"{spec.id}-upright.jpg"
        save_photo(spec, r)
        save_photo(dataclasses.replace(spec, orientation=1), u)
        pairs.append((r, u))
    index = open_index(tmp_path / "db", tiny_model)
    assert index.update([root]).added == 2 * len(rotated)
    vectors = index.store.vectors([photo_id(str(p)) for pair in pairs for p in pair])
    for r, u in pairs:
        twin = float(vectors[photo_id(str(r))] @ vectors[photo_id(str(u))])
        # The stored pixels, not turned upright, embed further away: the test can fail.
        sideways = Image.open(r).convert("RGB")
        sideways.thumbnail((512, 512))
        raw = float(tiny_model.embed_images([sideways])[0] @ vectors[photo_id(str(u))])
        assert twin > 0.998 and twin > raw, (r.name, twin, raw)
        meta = index.store.get([photo_id(str(r))])[photo_id(str(r))]
        assert (meta["width"], meta["height"]) == Image.open(u).size


def test_shards_split_the_library_and_leave_each_other_alone(tmp_path, album, tiny_model):
    root, specs = album
    index = open_index(tmp_path / "db", tiny_model)
    first = index.update([root], shard=(0, 2))
    second = index.update([root], shard=(1, 2))
    assert first.added + second.added == 16 and first.added > 0 and second.added > 0
    assert index.count() == 16
    for path in specs:
        assert shard_of(photo_id(str(path)), 2) in (0, 1)
    rerun = index.update([root], shard=(0, 2))
    assert rerun.to_json()["unchanged"] == first.added and rerun.removed == 0 and index.count() == 16
    assert parse_shard("3/4") == (3, 4)
    for bad in ["4/4", "1", "a/b", "0/0"]:
        with pytest.raises(Exception, match="shard"):
            parse_shard(bad)


def test_other_roots_are_left_alone_and_copies_reuse_vectors(tmp_path, album, tiny_model):
    root, specs = album
    index = open_index(tmp_path / "db", tiny_model)
    assert index.update([root / "a"]).added == 8
    assert index.update([root / "b"]).added == 8
    assert index.count() == 16  # indexing b removed nothing from a
    copy = root / "b" / "copy.jpg"
    shutil.copy(sorted(specs)[0], copy)
    report = index.update([root / "b"])
    assert report.added == 1 and report.embedded == 0 and report.unchanged == 8
    # Copies new in the same run: once the first is stored, the others reuse its vector.
    (new_photo,) = write_world(root / "c", 1, seed=321)
    for n in range(30):
        shutil.copy(new_photo, root / "c" / f"copy{n:02d}.jpg")
    report = index.update([root / "c"])
    assert report.added == 31 and report.embedded < 31
    vectors = index.store.vectors([photo_id(str(p)) for p in sorted((root / "c").glob("*.jpg"))])
    assert len(vectors) == 31 and all(np.allclose(v, vectors[photo_id(str(new_photo))], atol=1e-6)
                                      for v in vectors.values())


def test_model_mismatch_is_refused(tmp_path, album, tiny_model, other_model):
    root, _ = album
    db = tmp_path / "db"
    open_index(db, tiny_model).update([root])
    with pytest.raises(ModelMismatchError) as info:
        open_index(db, other_model, create=False)
    assert "python -m app index" in str(info.value) and tiny_model.fingerprint in str(info.value)
    # Re-indexing with the other model builds its own collection next to the first.
    other = open_index(db, other_model, create=True)
    assert other.update([root]).added == 16
    assert open_index(db, tiny_model, create=False).count() == 16


# --------------------------------------------------------------------------------------------- processes


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", ANONYMIZED_TELEMETRY="False")
    # Every progress step printed at once (tqdm otherwise redraws at most every 0.1 s): the kill test
    # reads it to kill mid-run, and on a fast idle machine a whole run fits in a few redraws.
    env.update(TQDM_MININTERVAL="0", TQDM_MINITERS="1")
    return env


def start_index(root: Path, db: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app", "index", str(root), "--db", str(db), "--model", str(model_dir),
           "--batch-size", "2", "--workers", "2", "--progress", *extra]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class ProgressWatcher(threading.Thread):
    """Reads tqdm's "n/total" from a process's stderr; latest count in .done."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.done, self.total, self.text = proc, -1, -1, b""

    def run(self):
        while chunk := self.proc.stderr.read1(4096):
            self.text += chunk
            counts = re.findall(rb"indexing:.*?(\d+)/(\d+)", self.text[-400:])
            if counts:
                self.done, self.total = int(counts[-1][0]), int(counts[-1][1])


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_indexes_each_photo_once(tmp_path, album, tiny_model_dir, tiny_model):
    root, specs = album
    expected = {str(p) for p in specs}
    expected |= {str(p) for p in write_world(root / "more", 40, seed=21)}
    for name in ("empty.jpg", "text.jpg", "truncated.png"):
        (root / name).write_bytes(BAD_FILES[name][0])
    db = tmp_path / "db"
    rng = random.Random(7)
    kills = 0
    for attempt in range(5):
        proc = start_index(root, db, tiny_model_dir)
        watcher = ProgressWatcher(proc)
        watcher.start()
        # Of this run's photos, the share done before the kill. At most half, so three kills in a row always
        # leave photos for the rerun (with up to 0.8 three kills could leave none on a fast machine).
        fraction = rng.uniform(0.0, 0.5)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if watcher.total > 0 and watcher.done >= fraction * watcher.total:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            time.sleep(rng.random() * 0.05)  # land anywhere inside a batch
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        watcher.join(5)
        if kills == 3:
            break
    assert kills == 3

    # The rerun (in this process, on the database the killed runs left) completes the library exactly.
    index = open_index(db, tiny_model, create=True)
    done_before = index.count()
    assert done_before < 56  # the kills interrupted real work
    final = index.update([root])
    assert final.total == len(expected) == 56
    assert final.added == 56 - done_before and final.unchanged == done_before
    assert sorted(s.reason for s in final.skipped) == ["empty", "not-an-image", "truncated"]
    stored = stored_paths(index)
    assert index.count() == 56 and set(stored) == expected
    again = index.update([root])
    assert again.read == 0 and again.unchanged == 56 and again.added == 0
    # Every vector is the photo's own: check a sample against a fresh embedding.
    sample = sorted(expected)[::11]
    fresh = tiny_model.embed_images([photos.load_photo(p)[0] for p in sample])
    got = index.store.vectors([photo_id(p) for p in sample])
    for p, v in zip(sample, fresh):
        assert float(got[photo_id(p)] @ v) > 0.9999


@pytest.mark.slow
def test_search_works_while_an_index_run_is_in_progress(tmp_path, album, tiny_model_dir, tiny_model):
    root, specs = album
    db = tmp_path / "db"
    index = open_index(db, tiny_model)
    index.update([root])
    write_world(root / "more", 24, seed=31)
    proc = start_index(root, db, tiny_model_dir, "--batch-size", "1")
    watcher = ProgressWatcher(proc)
    watcher.start()
    searches, during = 0, 0
    query = sorted(specs)[0]
    while proc.poll() is None:
        hits = search(index, image=query, k=5, filters=None)
        assert hits[0].path == str(query) and hits[0].score > 0.9999
        dated = search(index, text="a red circle", k=100, filters=None)
        assert 16 <= len(dated) <= 40
        searches += 1
        during += 0 < watcher.done < watcher.total
        time.sleep(0.1)  # a person searching, not a busy loop (the CPU is shared with the indexer)
    watcher.join(5)
    assert proc.returncode == 0, watcher.text[-2000:]
    assert searches > 0 and during > 0
    # The long-lived searcher sees the finished run (it reopens at most once a second).
    time.sleep(1.0)
    assert len(search(index, text="a red circle", k=200)) == 40
    newer = search(index, text="a red circle", k=200, filters=Filters(folder=str(root / "more")))
    assert len(newer) == 24
