"""Settings calibrated for one model, stored with it: ``<model folder>/app_calibration.json``.

Score thresholds and weights (the search cutoffs, the answer threshold, re-ranking and evidence
settings) mean something only for the model they were measured on, so they travel with its weights:
benchmarks/calibrate.py measures them on a calibration album and writes the file, and the app applies
them over the defaults of app.config whenever that model is loaded. The file names the model
fingerprint it was measured with; a file whose fingerprint differs (the weights changed since) is
ignored with a warning, and so is a model without one (a hub checkpoint): the defaults apply.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CALIBRATION_FILE = "app_calibration.json"


def calibration_path(model) -> Path | None:
    folder = Path(str(getattr(model, "name", "")))
    return folder / CALIBRATION_FILE if folder.is_dir() else None


def load_calibration(model) -> dict:
    """{"search": {...}, "answer": {...}} for this model, or {} (see module doc)."""
    path = calibration_path(model)
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return {}
    if data.get("fingerprint") != model.fingerprint:
        log.warning("ignoring %s: measured on model %s, not on this one (%s); using default settings",
                    path, data.get("fingerprint"), model.fingerprint)
        return {}
    return data


def calibrated(config, section: str, calibration: dict):
    """``config`` (a dataclass) with the fields of ``calibration[section]`` it has, replaced."""
    values = calibration.get(section) or {}
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k in names})
