"""app.text_encoder: the traced text path that lets `search` start without transformers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from app import text_encoder
from app.text_encoder import PROBE_TEXTS, TracedTextEncoder, cache_key, save_text_encoder
from tests.app.conftest import REPO_ROOT

SETTINGS = {"device": "cpu", "dtype": "float32", "image_crops": "native"}
QUERIES = ["a red circle", "a big blue square on the left and a small green triangle on a white background", "cat",
           "ß 🙂", "a small yellow star in the middle"]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model folder (its cache key is this copy's)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_saved_encoder_gives_the_models_embeddings(tiny_model, model_copy, tmp_path):
    cache = tmp_path / "cache"
    folder = save_text_encoder(tiny_model, str(model_copy), cache_dir=cache, **SETTINGS)
    assert folder is not None and sorted(p.name for p in folder.iterdir()) == ["encoder.pt", "meta.json",
                                                                                 "tokenizer.json"]
    fast = TracedTextEncoder.open(str(model_copy), cache_dir=cache, **SETTINGS)
    assert fast is not None
    assert (fast.fingerprint, fast.dim, fast.image_crops) == (tiny_model.fingerprint, tiny_model.dim,
                                                              tiny_model.image_crops)
    got, want = fast.embed_texts(QUERIES), tiny_model.embed_texts(QUERIES)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # Saving again is a no-op that returns the same folder (and leaves no temporary folders).
    assert save_text_encoder(tiny_model, str(model_copy), cache_dir=cache, **SETTINGS) == folder
    assert [p.name for p in cache.iterdir()] == [folder.name]


def test_other_settings_other_files_and_non_folders_find_no_encoder(tiny_model, model_copy, tmp_path):
    cache = tmp_path / "cache"
    assert save_text_encoder(tiny_model, str(model_copy), cache_dir=cache, **SETTINGS) is not None
    assert TracedTextEncoder.open(str(model_copy), cache_dir=cache, **{**SETTINGS, "dtype": "bfloat16"}) is None
    assert TracedTextEncoder.open(str(model_copy), cache_dir=cache, **{**SETTINGS, "image_crops": "base"}) is None
    assert cache_key("tiny:llava", **SETTINGS) is None and cache_key("org/model", **SETTINGS) is None
    assert cache_key(str(model_copy), **{**SETTINGS, "device": "cuda"}) is None
    # New weights in the same folder (fine-tuned in place): the old encoder is not found.
    weights = model_copy / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert TracedTextEncoder.open(str(model_copy), cache_dir=cache, **SETTINGS) is None


def test_an_encoder_that_disagrees_with_the_model_is_not_saved(tiny_model, model_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(text_encoder, "TOLERANCE", -1.0)  # no cosine can reach 2
    cache = tmp_path / "cache"
    assert save_text_encoder(tiny_model, str(model_copy), cache_dir=cache, **SETTINGS) is None
    assert not cache.exists() or not list(cache.iterdir())


def test_a_damaged_cache_is_ignored_with_a_warning(tiny_model, model_copy, tmp_path, caplog):
    cache = tmp_path / "cache"
    folder = save_text_encoder(tiny_model, str(model_copy), cache_dir=cache, **SETTINGS)
    (folder / "encoder.pt").write_bytes(b"not a torchscript archive")
    with caplog.at_level(logging.WARNING, logger="app.text_encoder"):
        assert TracedTextEncoder.open(str(model_copy), cache_dir=cache, **SETTINGS) is None
    assert "ignoring the saved text encoder" in caplog.text


def test_the_probe_texts_cover_lengths_and_scripts():
    lengths = {len(t) for t in PROBE_TEXTS}
    assert min(lengths) == 1 and max(lengths) > 60 and any(not t.isascii() for t in PROBE_TEXTS)


def _search(db, model, query, cache, probe_modules=False):
    """`python -m app search` in a new process with XDG_CACHE_HOME=cache; (stdout, modules loaded)."""
    probe = ("import sys\nfrom app.__main__ import main\ncode = main(sys.argv[1:])\nsys.stdout.flush()\n"
             "print(sorted(m for m in ('transformers', 'torch', 'chromadb') if m in sys.modules), file=sys.stderr)\n"
             "sys.exit(code)")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(cache))
    done = subprocess.run([sys.executable, "-c", probe, "search", query, "--db", str(db), "--model", str(model),
                           "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_cli_search_starts_without_transformers_once_the_model_ran(album, model_copy, tmp_path):
    root, _ = album
    db, cache = tmp_path / "db", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(tmp_path / "cache-of-index"))
    done = subprocess.run([sys.executable, "-m", "app", "index", str(root), "--db", str(db), "--model",
                           str(model_copy)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "cache-of-index").glob("cafe-photos/text-encoders/*/meta.json"))  # index saved one
    first, modules = _search(db, model_copy, "a red circle", cache)
    assert "transformers" in modules  # nothing saved in this cache yet: the model loaded...
    assert list(cache.glob("cafe-photos/text-encoders/*/meta.json"))  # ...and saved its text path after
    for query in ("a red circle", "a small green triangle on the left"):
        fast, modules = _search(db, model_copy, query, cache)
        assert modules == ["chromadb", "torch"]
        slow, _ = _search(db, model_copy, query, tmp_path / f"empty-{len(query)}")
        assert [h["path"] for h in fast["results"]] == [h["path"] for h in slow["results"]]
        assert np.allclose([h["score"] for h in fast["results"]], [h["score"] for h in slow["results"]], atol=1e-5)
    assert fast["results"] != first["results"]  # the two queries differ
