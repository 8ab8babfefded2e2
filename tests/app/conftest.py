"""Shared fixtures for the app tests: tiny models saved once per session, sample-world albums, a Chroma server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import IndexConfig
from data.world import sample_photo_specs, save_photo

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]

ALBUM_N = 16
ALBUM_SEED = 11
# Small photos keep decoding cheap; the tiny model looks at 64 px anyway.
SHORT_SIDE = 96


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA model saved to disk (what `--model PATH` loads)."""
    from cafe_core.tiny import save_tiny

    return Path(save_tiny(tmp_path_factory.mktemp("models") / "tiny-llava", "llava", seed=0))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from cafe_core import CafeModel

    return CafeModel.load(str(tiny_model_dir), device="cpu", dtype="float32", batch_size=8)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """Same architecture, other weights: a different fingerprint with the same dimension."""
    from cafe_core.tiny import save_tiny

    return Path(save_tiny(tmp_path_factory.mktemp("models") / "tiny-llava-seed1", "llava", seed=1))


@pytest.fixture(scope="session")
def other_model(other_model_dir):
    from cafe_core import CafeModel

    return CafeModel.load(str(other_model_dir), device="cpu", dtype="float32", batch_size=8)


def write_world(folder: Path, n: int, seed: int, start: int = 0) -> dict[Path, object]:
    """n sample-world JPEGs (EXIF date and orientation set) in folder: {path: PhotoSpec}."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = sample_photo_specs(start + n, seed=seed, short_side=SHORT_SIDE)[start:]
    out = {}
    for spec in specs:
        path = folder / f"{spec.id}.jpg"
        save_photo(spec, path)
        out[path] = spec
    return out


@pytest.fixture(scope="session")
def world_album_master(tmp_path_factory):
    """16 world photos, half in a/ and half in b/c/ (copy it before changing anything)."""
    root = tmp_path_factory.mktemp("world") / "photos"
    specs = write_world(root / "a", ALBUM_N // 2, ALBUM_SEED)
    specs.update(write_world(root / "b" / "c", ALBUM_N // 2, ALBUM_SEED, start=ALBUM_N // 2))
    return root, specs


@pytest.fixture
def album(world_album_master, tmp_path):
    """A private copy of the world album: (root, {path: spec}) with paths inside the copy."""
    master, specs = world_album_master
    root = tmp_path / "photos"
    shutil.copytree(master, root)
    return root, {root / p.relative_to(master): s for p, s in specs.items()}


def small_config(**overrides) -> IndexConfig:
    """Index settings for tests: small batches so batching paths run."""
    values = dict(batch_size=4, workers=2)
    values.update(overrides)
    return IndexConfig(**values)


def open_index(db, model, create: bool = True, config: IndexConfig | None = None, **kw):
    from app.index import PhotoIndex

    return PhotoIndex.open(db=db, model=model, create=create, config=config or small_config(), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A `chroma run` server on loopback: (host, port)."""
    import chromadb
    from chromadb.config import Settings

    path = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = open(path / "server.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "chroma"), "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False)).heartbeat()
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"chroma server did not start: {(path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield "127.0.0.1", port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# Web UI fixtures (a sample album with ground truth and a `serve` subprocess), shared by the UI test modules.
from tests.app.ui_server import ui_server  # noqa: E402,F401
