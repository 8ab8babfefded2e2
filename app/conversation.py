"""A conversation kept in a file, so `python -m app ask --session FILE` can hold one across runs.

The file is JSON, ``{"version": 1, "turns": [{"question", "answer", "photos", "parts", "kind"}, ...]}``
(app.answer.Turn), created on the first answer and rewritten atomically after each one, so a killed
run leaves the previous conversation intact. The web UI keeps the same turns in the page's state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from app.answer import Answer, Turn
from app.config import ConfigError

SESSION_VERSION = 1
MAX_TURNS = 50  # the oldest turns beyond this are dropped (only the last photo turn is ever needed)


class Session:
    """The turns of one conversation, read from and written to ``path``."""

    def __init__(self, path: Path, turns: list[Turn]):
        self.path, self.turns = path, turns

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Session":
        """Read a session file (none yet: an empty conversation). ConfigError for a file that is not one."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"--session {path} is a folder; give a file path")
        if not path.exists():
            return cls(path, [])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != SESSION_VERSION:
                raise ValueError(f"version {data.get('version')!r}, this app reads version {SESSION_VERSION}")
            turns = [Turn.from_json(t) for t in data["turns"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"--session {path} is not a conversation file ({type(e).__name__}: {e}); "
                              "give a new file name to start a conversation") from None
        return cls(path, turns)

    def add(self, answer: Answer) -> None:
        """Append an answered turn and save the file (atomically: a private temp file, synced, then
        renamed over it; two runs at once each leave a whole file, the later one's)."""
        self.turns = (self.turns + [Turn.of(answer)])[-MAX_TURNS:]
        text = json.dumps({"version": SESSION_VERSION, "turns": [t.to_json() for t in self.turns]}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise ConfigError(f"cannot save the conversation to --session {self.path}: {e.strerror or e}") from None
