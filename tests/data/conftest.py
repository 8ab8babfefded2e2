"""Shared fixtures for the data tests: one small album written once per session."""

from __future__ import annotations

import pytest

from data.synth import write_album

ALBUM_N = 24
ALBUM_SEED = 5


@pytest.fixture(scope="session")
def album(tmp_path_factory):
    """A 24-photo train album on disk (photos, llava.json, captions.jsonl, ground_truth.json)."""
    out = tmp_path_factory.mktemp("album")
    write_album(out, n=ALBUM_N, seed=ALBUM_SEED, split="train")
    return out
