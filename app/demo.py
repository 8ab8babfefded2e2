"""`make run` / `python -m app demo`: a sample album, indexed with the shipped model, served in the web UI.

First run: writes DEMO_N sample-world photos (seed DEMO_SEED, split "test": photos the shipped model
never saw in training) to the per-user sample-album folder next to the default database
(`~/.local/share/cafe-photos/sample-album`, or `$XDG_DATA_HOME/cafe-photos/sample-album`, or next to
`$CAFE_PHOTOS_DB`), indexes it and serves the UI on http://127.0.0.1:7860. Later runs reuse the
album and the index (only changed photos are read again).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from app.config import default_db_dir

DEMO_N = 300
DEMO_SEED = 100  # distinct from the training seeds (1 train, 3 test)
DEMO_SPLIT = "test"
ALBUM_FOLDER = "sample-album"


def default_album_dir(db: str | os.PathLike | None = None) -> Path:
    """Where the sample album lives: next to the database folder."""
    return Path(db).expanduser().resolve().parent / ALBUM_FOLDER if db else default_db_dir().parent / ALBUM_FOLDER


def ensure_album(album_dir: str | os.PathLike, n: int = DEMO_N, seed: int = DEMO_SEED, split: str = DEMO_SPLIT,
                 style: str = "plain") -> Path:
    """The album's photos folder, writing the album first unless a complete one with these settings exists.

    data.synth writes ground_truth.json last, so its presence with the same (n, seed, split) means
    an earlier run finished; an interrupted one is simply written again.
    """
    from data.synth import GROUND_TRUTH_FILE, PHOTOS_DIR, write_album

    album_dir = Path(album_dir)
    gt_path = album_dir / GROUND_TRUTH_FILE
    if gt_path.exists():
        try:
            gt = json.loads(gt_path.read_text(encoding="utf-8"))
            wanted = (seed, split, n, style)
            if (gt.get("seed"), gt.get("split"), len(gt.get("photos", [])), gt.get("style", "plain")) == wanted:
                return album_dir / PHOTOS_DIR
        except (OSError, ValueError):
            pass  # unreadable: write it again
    print(f"writing a sample album of {n} photos to {album_dir} ...", file=sys.stderr, flush=True)
    write_album(album_dir, n=n, seed=seed, split=split, style=style)
    return album_dir / PHOTOS_DIR


def index_with_progress(service, photos: Path) -> None:
    """Index the album through the service's job, printing progress lines until it is done."""
    job = service.start_indexing(str(photos))
    last = 0.0
    while job.state == "running":
        if time.time() - last > 2:
            print(job.describe(), file=sys.stderr, flush=True)
            last = time.time()
        time.sleep(0.2)
    print(job.describe(), flush=True)
    if job.state == "failed":
        raise RuntimeError(job.error)
