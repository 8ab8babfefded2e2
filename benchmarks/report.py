"""How every benchmark hands back its result: indented JSON on stdout, and the same text in --out when given."""
from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | Path | None = None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
