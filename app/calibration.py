"""Settings calibrated for one model, stored with it: ``<model folder>/app_calibration.json``.

Score thresholds and weights (the search cutoffs, the answer threshold, re-ranking and evidence
settings) mean something only for the model they were measured on, so they travel with its weights:
benchmarks/calibrate.py measures them on a calibration album and writes the file, and the app applies
them over the defaults of app.config whenever that model is loaded. The file names the model
fingerprint it was measured with; a file whose fingerprint differs (the weights changed since) is
ignored with a warning, and so is a model without one (a hub checkpoint), a file that is not valid, and
any value of the wrong type: the defaults apply.

    settings = model_settings(model)   # what every entry point (UI, CLI, benchmarks) answers with
    settings.answer, settings.search, settings.vocab
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from app.config import AnswerConfig, SearchConfig
from cafe_core.vocab import TrainingVocab

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
    if not isinstance(data, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return {}
    if data.get("fingerprint") != model.fingerprint:
        log.warning("ignoring %s: measured on model %s, not on this one (%s); using default settings",
                    path, data.get("fingerprint"), model.fingerprint)
        return {}
    return data


def calibrated(config, section: str, calibration: dict):
    """``config`` (a dataclass) with the fields of ``calibration[section]`` it has, replaced; a value whose
    type does not match the field's default is ignored with a warning (an int is taken for a float)."""
    values = calibration.get(section)
    if not isinstance(values, dict):
        return config
    hints = typing.get_type_hints(type(config))
    changes = {}
    for f in dataclasses.fields(config):
        if f.name not in values:
            continue
        value = values[f.name]
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)  # "float | None" -> (float, NoneType)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) not in allowed:
            log.warning("ignoring calibrated %s.%s = %r: not a %s", section, f.name, value, hints[f.name])
            continue
        changes[f.name] = value
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class ModelSettings:
    """What the app answers and searches with for one model: its calibrated settings and its training words."""

    answer: AnswerConfig
    search: SearchConfig
    vocab: TrainingVocab | None


def model_settings(model, answer: AnswerConfig | None = None, search: SearchConfig | None = None,
                   calibrate: bool = True) -> ModelSettings:
    """The model's calibration applied over ``answer`` / ``search`` (default: app.config's defaults), and
    the words it was trained on (None: open-vocabulary). ``calibrate=False`` keeps the defaults."""
    calibration = load_calibration(model) if calibrate else {}
    name = str(getattr(model, "name", ""))
    return ModelSettings(calibrated(answer or AnswerConfig(), "answer", calibration),
                         calibrated(search or SearchConfig(), "search", calibration),
                         TrainingVocab.load(name) if name and os.path.isdir(name) else None)
