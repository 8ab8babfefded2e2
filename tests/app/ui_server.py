"""Fixtures for the web UI tests: a sample album with ground truth and a real `python -m app serve`
subprocess on loopback, started once per session, with a socket audit hook that records every
connection attempt to a non-loopback address (tests/app/audit/sitecustomize.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import DEMO_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
AUDIT_DIR = Path(__file__).resolve().parent / "audit"

# The UI test album: unseen photos (test split, a seed the demo model was not trained on).
UI_ALBUM_N = 40
UI_ALBUM_SEED = 200
BROKEN_NAME = "broken.jpg"  # a text file named .jpg: must land in the skip list


def shipped_model() -> bool:
    """Whether the trained demo model is present (quality assertions need it)."""
    return (DEMO_MODEL_DIR / "config.json").is_file()


needs_shipped_model = pytest.mark.skipif(not shipped_model(), reason=f"needs the shipped model at {DEMO_MODEL_DIR}")


@dataclass
class UIServer:
    url: str
    port: int
    proc: subprocess.Popen
    album: Path  # the album folder (ground_truth.json, photos/)
    photos: Path  # what gets indexed
    ground_truth: dict
    audit_log: Path
    model: str
    log: Path

    def photo_spec(self, path: str) -> dict:
        """Ground-truth record of a photo by its path (the file stem is the photo id)."""
        stem = Path(path).stem
        return next(p for p in self.ground_truth["photos"] if p["id"] == stem)


def write_ui_album(folder: Path, n: int = UI_ALBUM_N, seed: int = UI_ALBUM_SEED) -> dict:
    """A sample-world album (photos/ + ground_truth.json) plus one broken file; returns the ground truth."""
    from data.synth import load_ground_truth, write_album

    write_album(folder, n=n, seed=seed, split="test")
    (folder / "photos" / BROKEN_NAME).write_text("this is not a photo")
    return load_ground_truth(folder)


def start_server(model: str, db: Path, workdir: Path, extra_args: tuple[str, ...] = (), timeout: float = 120,
                 command: str = "serve"):
    """Start `python -m app serve` (or demo) on a free loopback port with the audit hook; returns (proc, url, port, log)."""
    from tests.app.conftest import free_port

    port = free_port()
    audit_log = workdir / "outbound.log"
    log = workdir / f"{command}-{port}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(AUDIT_DIR), str(REPO_ROOT)])
    env["CAFE_AUDIT_LOG"] = str(audit_log)
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the app must turn analytics off by itself
    out = open(log, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", command, "--db", str(db), "--model", model, "--port", str(port),
         "--device", "cpu", *extra_args],
        cwd=str(workdir), env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + timeout
    url = None
    while url is None:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "is running at " in line:
                url = line.split("is running at ", 1)[1].split()[0]
        if url is None:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the UI server did not start:\n{text[-3000:]}")
            time.sleep(0.3)
    return proc, url, port, log


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory, request) -> UIServer:
    """One `serve` subprocess for the UI, API and security tests (shipped model if present, else tiny)."""
    work = tmp_path_factory.mktemp("ui")
    album = work / "album"
    gt = write_ui_album(album)
    if shipped_model():
        model = str(DEMO_MODEL_DIR)
    else:
        model = str(request.getfixturevalue("tiny_model_dir"))
    proc, url, port, log = start_server(model, work / "db", work)
    server = UIServer(url, port, proc, album, album / "photos", gt, work / "outbound.log", model, log)
    yield server
    stop_server(proc)
    shutil.copy(log, work / "serve-final.log")


def read_outbound(server: UIServer) -> list[dict]:
    """Connection attempts to non-loopback addresses the server made so far."""
    if not server.audit_log.exists():
        return []
    return [json.loads(line) for line in server.audit_log.read_text().splitlines() if line.strip()]
