"""Errors of the data package."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A dataset file is malformed or unusable. The message names the file and, where there is one,
    the line (JSONL/CSV, JSON syntax) or record index (JSON list)."""

    def __init__(self, path: str | Path | None, message: str, *, line: int | None = None, index: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.index = index
        where = str(self.path) if self.path is not None else "<dataset>"
        if line is not None:
            where += f", line {line}"
        if index is not None:
            where += f", record {index}"
        super().__init__(f"{where}: {message}")
