"""The quickstart: `python -m app demo` creates the sample album once, indexes it, serves the UI on
loopback and prints the URL; a rerun reuses the album and the index."""

from __future__ import annotations

import json
import urllib.request

import pytest

from app.demo import DEMO_SEED, DEMO_SPLIT, default_album_dir, ensure_album
from tests.app.ui_server import start_server, stop_server

pytestmark = pytest.mark.timeout(240)


def test_album_lives_next_to_the_db_and_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFE_PHOTOS_DB", str(tmp_path / "data" / "db"))
    assert default_album_dir() == tmp_path / "data" / "sample-album"
    assert default_album_dir(tmp_path / "elsewhere" / "db") == tmp_path / "elsewhere" / "sample-album"
    photos = ensure_album(tmp_path / "album", n=6)
    gt = json.loads((tmp_path / "album" / "ground_truth.json").read_text())
    assert (gt["seed"], gt["split"], len(gt["photos"])) == (DEMO_SEED, DEMO_SPLIT, 6)
    stamps = {p.name: p.stat().st_mtime_ns for p in photos.iterdir()}
    assert len(stamps) == 6
    assert ensure_album(tmp_path / "album", n=6) == photos
    assert {p.name: p.stat().st_mtime_ns for p in photos.iterdir()} == stamps  # reused, not rewritten
    ensure_album(tmp_path / "album", n=8)  # other settings: written again
    assert len(list(photos.iterdir())) == 8


def test_demo_serves_the_indexed_album_and_reuses_it(tmp_path, tiny_model_dir):
    db, album = tmp_path / "db", tmp_path / "album"
    args = ("--album", str(album), "--album-size", "12")
    for run in (1, 2):
        proc, url, port, log = start_server(str(tiny_model_dir), db, tmp_path, args, command="demo")
        try:
            assert url == f"http://127.0.0.1:{port}/"
            text = log.read_text()
            if run == 1:
                assert "writing a sample album of 12 photos" in text and "added 12" in text
            else:
                assert "writing a sample album" not in text and "unchanged 12" in text and "added 0" in text
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.status == 200
        finally:
            stop_server(proc)
