"""Defaults for the photo app: where the shipped model and the database live, and index settings.

This is the one home of the app's default paths and tunables. Importing it has no side effects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The shipped demo model, used when no --model is given (built by `make demo-model`).
DEMO_MODEL_DIR = REPO_ROOT / "models" / "cafe-tiny-sampleworld"

# Environment variable that overrides the default database folder.
DB_ENV_VAR = "CAFE_PHOTOS_DB"

# Telemetry off for every library the app touches (applied by the CLI, never at import).
QUIET_ENV = {
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


class ConfigError(Exception):
    """A setting the user must fix (missing model, bad option); the message says how."""


def apply_quiet_env() -> None:
    """Turn telemetry off in this process unless the user set these variables themselves."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def default_db_dir() -> Path:
    """The per-user database folder.

    `$CAFE_PHOTOS_DB` if set, else `$XDG_DATA_HOME/cafe-photos/db`, else `~/.local/share/cafe-photos/db`.
    """
    override = os.environ.get(DB_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "cafe-photos" / "db"


def resolve_model(model: str | None) -> str:
    """The model to load: `model` as given, or the shipped demo model when it is None.

    Raises ConfigError when no model is given and the demo model has not been built yet.
    """
    if model:
        return model
    if not DEMO_MODEL_DIR.is_dir():
        raise ConfigError(
            f"no --model given and the shipped demo model is missing ({DEMO_MODEL_DIR}).\n"
            "Pass --model PATH_OR_HUB_ID (e.g. --model tiny:llava for a smoke test), "
            "or build the demo model with `make demo-model`."
        )
    return str(DEMO_MODEL_DIR)


def default_workers() -> int:
    """Decode threads: enough to keep the model fed without starving it of CPU."""
    return max(1, min(4, (os.cpu_count() or 2)))


@dataclass
class IndexConfig:
    """How photos are decoded and batched while indexing."""

    # Longest side of the image handed to the model; its processor resizes further.
    max_side: int = 512
    # Decoded-pixel cap (width * height); bigger files are skipped as decompression bombs.
    # 150 MP admits 100 MP medium-format photos and most panoramas.
    max_pixels: int = 150_000_000
    # Photos per model call.
    batch_size: int = 16
    # Decode threads running ahead of the model.
    workers: int = field(default_factory=default_workers)
    # How many batches may be decoded ahead of the model (bounds memory).
    prefetch_batches: int = 3


@dataclass
class SearchConfig:
    """Defaults for queries and duplicate detection."""

    k: int = 10
    # Cosine similarity above which two photos count as near duplicates.
    near_duplicate_threshold: float = 0.95
