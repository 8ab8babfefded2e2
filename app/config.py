"""Defaults for the photo app: where the shipped model and the database live, and every tunable.

This is the one home of the app's default paths and tunables (indexing, search, answers, the web UI);
command-line help shows these defaults. Importing it has no side effects.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The shipped demo model, used when no --model is given (built by `make demo-model`).
DEMO_MODEL_DIR = REPO_ROOT / "models" / "cafe-tiny-sampleworld"

# Environment variable that overrides the default database folder.
DB_ENV_VAR = "CAFE_PHOTOS_DB"

# Telemetry off for every library the app touches, and no library progress bars on stderr (the model
# loads in a second; stderr is for the app's own messages). Applied by the CLI, never at import.
QUIET_ENV = {
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


class ConfigError(Exception):
    """A setting the user must fix (missing model, bad option); the message says how."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story for the user (the CLI prints one line, the UI shows it
    in the status line): no traceback."""
    import sys

    from app.search import QueryError
    from app.store import StoreError

    errors: list[type[BaseException]] = [ConfigError, StoreError, QueryError, FileNotFoundError]
    # Only when cafe_core was imported (no CafeError can come from elsewhere): importing it loads torch,
    # seconds that an error found before the model loads should not cost.
    cafe_errors = sys.modules.get("cafe_core.errors")
    if cafe_errors is not None:
        errors.append(cafe_errors.CafeError)
    return tuple(errors)


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
    return _xdg_dir("XDG_DATA_HOME", Path(".local") / "share") / "cafe-photos" / "db"


def default_cache_dir() -> Path:
    """The per-user cache folder (app.text_encoder): `$XDG_CACHE_HOME/cafe-photos`, else `~/.cache/cafe-photos`."""
    return _xdg_dir("XDG_CACHE_HOME", Path(".cache")) / "cafe-photos"


def _xdg_dir(variable: str, under_home: Path) -> Path:
    """The XDG base folder named by `variable`, else its default under the home folder."""
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else Path.home() / under_home


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


# Longest side of the image handed to the model; its processor resizes further.
DEFAULT_MAX_SIDE = 512
# Decoded-pixel cap (width * height); bigger files are skipped as decompression bombs. 150 MP admits
# 100 MP medium-format photos and most panoramas.
DEFAULT_MAX_PIXELS = 150_000_000
DEFAULT_K = 10  # results per search, photos retrieved per question
# Where the web UI listens by default (this machine only), and the port of a `chroma run` server.
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_CHROMA_PORT = 8000


# --dtype choices: "auto" is bfloat16 on GPUs that support it, float32 elsewhere (cafe_core.loading.resolve_dtype).
DTYPES = ("auto", "float32", "bfloat16")
# --image-crops choices: cafe_core.crops.IMAGE_CROPS plus "auto" (the cheapest, "base", on CPU; "native" on a GPU).
IMAGE_CROPS = ("auto", "native", "base")


@dataclass
class ModelConfig:
    """How the app loads its one model (app.model.load_model).

    image_crops: how many views of a photo embeddings read (cafe_core.crops). "auto" (the default) is the
        cheapest the model supports on a CPU ("base": one view, 2x cheaper for LLaVA-OneVision, 17x for
        SmolVLM) and the checkpoint's own processor ("native") on a GPU; plain LLaVA reads one view either
        way. The setting is part of the model's fingerprint where it changes the vectors: an index built
        with another setting is refused with the option to pass (search with the one it was built with).
    """

    device: str = "auto"
    dtype: str = "auto"
    image_crops: str = "auto"


@dataclass
class IndexConfig:
    """How photos are decoded and batched while indexing."""

    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Photos per model call.
    batch_size: int = 16
    # Decode threads running ahead of the model.
    workers: int = field(default_factory=default_workers)
    # How many batches may be decoded ahead of the model (bounds memory).
    prefetch_batches: int = 3


@dataclass
class SearchConfig:
    """Defaults for queries and duplicate detection."""

    k: int = DEFAULT_K
    # Cosine similarity above which two photos count as near duplicates.
    near_duplicate_threshold: float = 0.95
    # Relevance cutoffs: results scoring below are not shown unless asked for ("N more below the
    # cutoff"), instead of padding every search to k. Model-specific: calibrated on the shipped model
    # (benchmarks/calibrate.py, stored in its app_calibration.json); None shows the top k.
    min_text_score: float | None = None
    min_image_score: float | None = None
    # Composed queries (a photo + "but on a white background"): weight of the text's embedding added to
    # the photo's (app.search.query_vector).
    composed_text_weight: float = 1.0


@dataclass
class AnswerConfig:
    """How grounded answers pick their evidence and generate.

    k: photos retrieved for a question (the candidates the context is chosen from).
    min_score: score a photo needs to be a candidate (the mean cosine over the things the question names
        with decomposition, else the question's cosine); when no photo reaches it, the answer is a refusal
        ("I found no photo with ..."). Scores mean something only for one model: the shipped model's value
        is calibrated (benchmarks/calibrate.py, stored in its app_calibration.json, applied by
        app.calibration); this default is for models without one.
    max_context: at most this many photos are shown to the model.
    context_margin: only photos within this relevance of the best are shown: 0 shows the best photo (and
        exact ties), which is what a small model reads best; a model trained with several photos per
        grounded prompt can take a wider margin (e.g. 0.05) and cite the right one among them.
    rerank_top: the best this many retrieved photos (those scoring >= min_score) are re-ranked by the
        same model before the context is chosen from them; 0 or 1 turns re-ranking off (context from
        retrieval order). Re-ranking asks the generator how likely "a photo of <the things the question
        names>" (or the question itself, when it names none) is as a description of each photo
        (CafeModel.reply_logprob with the describe question): the embedding ranks by one pooled
        vector, the generator reads every image token against every word.
    rerank_weight: score added per nat of that log-likelihood (relevance = score + weight x log P;
        calibrated).
    decompose: retrieve a question that names its photo by what it shows ("... in the photo with the
        red car and the dog?") by each of those things (app.query.referring_parts,
        app.search.search_all_of) instead of by one embedding of the whole question.
    check_evidence: before a photo is shown to the model, ask the model whether it shows each thing the
        question names (app.evidence); photos that fail are never cited, and when none of the best
        ``evidence_top`` re-ranked photos passes, the answer is a refusal naming what was not found, with
        the ``max_closest`` closest photos as closest matches.
    min_yes: P(yes) the probe "Is there <thing> in the photo?" needs (calibrated).
    min_attribute: for a thing named by a color and a shape, the larger of P(its color | "What color is
        the <shape>?") and P(its shape | "What shape is the <color> object?") needs this (calibrated).
    min_size_margin: nats by which "a photo of a small X" must beat "a photo of a large X" (and the
        reverse) for a thing named with its size (calibrated).
    max_new_tokens: length limit of the generated answer.
    max_side: longest side of each photo handed to the model (its processor resizes further).
    """

    k: int = DEFAULT_K
    min_score: float = 0.39
    max_context: int = 3
    context_margin: float = 0.0
    rerank_top: int = 5
    rerank_weight: float = 0.013
    decompose: bool = True
    check_evidence: bool = True
    evidence_top: int = 5
    min_yes: float = 0.5
    min_attribute: float = 0.0
    min_size_margin: float = 0.0
    max_closest: int = 3
    max_new_tokens: int = 48
    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class UIConfig:
    """Limits of the web server (app.ui, app.guard)."""

    max_file_size: str = "25mb"  # one upload: a query photo, not a library (phone photos are 3-12 MB)
    max_uploads: int = 60  # uploads per client within upload_window_s
    max_upload_total_bytes: int = 200 * 2**20  # bytes uploaded per client within upload_window_s
    upload_window_s: float = 3600.0
    temp_max_age_s: float = 6 * 3600  # temp files (uploads, thumbnails) older than this are deleted
    temp_max_bytes: int = 1 * 2**30  # ... and the oldest while the temp folder is bigger than this
    login_base_delay_s: float = 0.5  # wait before judging a client's next login after one failure,
    login_max_delay_s: float = 8.0  # doubling with each further failure, up to this
    max_k: int = 60  # largest results-per-search the Settings slider offers
    page_size: int = 60  # photos per page of the Photos view


def with_overrides(config, items):
    """A copy of a config dataclass with ``NAME=VALUE`` items applied (``serve --ui-limit``), each VALUE
    read as the type of the field's current value; ConfigError names the fields for an unknown one."""
    changes = {}
    fields = {f.name: f for f in dataclasses.fields(config)}
    for item in items or ():
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ConfigError(f"{item!r}: want NAME=VALUE with NAME one of {', '.join(fields)}")
        # The declared type (annotations are strings here), else the current value's: 6 * 3600 is a float field.
        kind = {"int": int, "float": float, "str": str}.get(str(fields[name].type), type(getattr(config, name)))
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(f"{item!r}: {name} wants a value of type {kind.__name__}") from None
        if isinstance(value, (int, float)) and (not math.isfinite(value) or value < 0):
            raise ConfigError(f"{item!r}: {name} wants a finite value >= 0")
        changes[name] = value
    return dataclasses.replace(config, **changes)
