"""Session-wide settings for every test package."""

from __future__ import annotations

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="cafe-tests-cache-")


def pytest_configure(config):
    # Caches the app writes (app.text_encoder) go to a folder of this session, inherited by every CLI
    # subprocess: tests neither read a user's cache nor leave files in it.
    os.environ["XDG_CACHE_HOME"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
