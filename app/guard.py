"""The web server's front door: an ASGI middleware in front of Gradio that decides what may be read.

- ``/photo/<record id>``: the original of an indexed photo, looked up in the store by id (never by a
  path from the URL); anything else is 404. Hidden and skipped files are not in the store, so they are
  never served.
- Gradio's file routes (``/gradio_api/file=...``) serve only files inside the server's own temp folder
  (uploads, thumbnails); a malformed path (NUL byte, bad percent-encoding) is 400, anything else 403.
  The proxy route and URLs (Gradio would fetch them: an outbound connection) are 403.
- Uploads: a per-client count and total-size quota over a rolling window (429 past it); the temp
  folder is pruned by age and total size.
- Logins: each failed attempt from a client doubles the wait before its next one is looked at.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from app.config import UIConfig
from app.photos import IMAGE_EXTENSIONS

_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/(file=|file/|proxy=)(.*)$", re.DOTALL)
_UPLOAD_ROUTE = re.compile(r"^(?:/gradio_api)?/upload$")
_LOGIN_ROUTE = re.compile(r"^(?:/gradio_api)?/login/?$")
PHOTO_ROUTE = "/photo/"
_RECORD_ID = re.compile(r"^[0-9a-f]{32}$")


def photo_url(record_id: str) -> str:
    """The URL path the original of an indexed photo is served at."""
    return PHOTO_ROUTE + record_id


@dataclass
class _Window:
    """Events of one client within a rolling window: (time, size)."""

    events: deque

    def add(self, now: float, size: int, window: float) -> None:
        self.events.append((now, size))
        self.prune(now, window)

    def prune(self, now: float, window: float) -> None:
        while self.events and now - self.events[0][0] > window:
            self.events.popleft()

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def total(self) -> int:
        return sum(size for _, size in self.events)


class Guard:
    """ASGI middleware (see module doc). ``photo_file(record_id) -> path | None`` comes from the service."""

    def __init__(self, app, photo_file, temp_dir: str, config: UIConfig | None = None):
        self.app = app
        self.photo_file = photo_file
        self.temp_dir = os.path.realpath(temp_dir)
        self.config = config or UIConfig()
        self._uploads: dict[str, _Window] = defaultdict(lambda: _Window(deque()))
        self._failed_logins: dict[str, int] = defaultdict(int)
        self._last_prune = 0.0

    # ----------------------------------------------------------------------------------- routing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        client = (scope.get("client") or ("?", 0))[0]
        if path.startswith(PHOTO_ROUTE):
            return await self._send_photo(path[len(PHOTO_ROUTE):], send)
        m = _FILE_ROUTE.match(path)
        if m:
            status = self._file_status(scope, *m.groups())
            if status != 200:
                return await _respond(send, status, {400: "Malformed file path.", 403: "File not allowed."}[status])
        elif _UPLOAD_ROUTE.match(path) and scope.get("method") == "POST":
            refusal = self._upload_refusal(client, _content_length(scope))
            if refusal:
                return await _respond(send, 429, refusal)
            self._prune_temp()
        elif _LOGIN_ROUTE.match(path) and scope.get("method") == "POST":
            return await self._login(scope, receive, send, client)
        return await self.app(scope, receive, send)

    # ------------------------------------------------------------------------------------- files

    def _file_status(self, scope, kind: str, target: str) -> int:
        raw = scope.get("raw_path") or b""
        if "\x00" in target or b"%00" in raw.lower() or _bad_encoding(raw):
            return 400
        if kind == "proxy=" or "://" in target or target.startswith(("http:", "https:")):
            return 403
        try:
            real = os.path.realpath(os.path.abspath(target))  # as Gradio reads it, then symlinks resolved
        except (ValueError, OSError):
            return 400
        inside = real == self.temp_dir or real.startswith(self.temp_dir + os.sep)
        return 200 if inside else 403

    async def _send_photo(self, record_id: str, send):
        path = self.photo_file(record_id) if _RECORD_ID.match(record_id) else None
        if not path or os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
            return await _respond(send, 404, "No such photo.")
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return await _respond(send, 404, "No such photo.")
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                                (b"x-content-type-options", b"nosniff"), (b"cache-control", b"private, max-age=3600")]})
        await send({"type": "http.response.body", "body": body})

    # ----------------------------------------------------------------------------------- uploads

    def _upload_refusal(self, client: str, size: int) -> str:
        cfg = self.config
        now = time.monotonic()
        window = self._uploads[client]
        window.prune(now, cfg.upload_window_s)
        if window.count + 1 > cfg.max_uploads:
            return f"Too many uploads: at most {cfg.max_uploads} per {cfg.upload_window_s // 60:.0f} minutes."
        if window.total + size > cfg.max_upload_total_bytes:
            return f"Upload quota used up: at most {cfg.max_upload_total_bytes // 2**20} MB per " \
                   f"{cfg.upload_window_s // 60:.0f} minutes."
        window.add(now, size, cfg.upload_window_s)
        return ""

    def _prune_temp(self) -> None:
        """Delete temp files past their age, then the oldest while the folder is over its size cap."""
        now = time.time()
        if now - self._last_prune < 5:
            return
        self._last_prune = now
        prune_folder(self.temp_dir, self.config.temp_max_age_s, self.config.temp_max_bytes)

    # ------------------------------------------------------------------------------------ logins

    async def _login(self, scope, receive, send, client: str):
        failures = self._failed_logins[client]
        if failures:
            await asyncio.sleep(min(self.config.login_max_delay_s, self.config.login_base_delay_s * 2 ** (failures - 1)))
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code", 500) >= 400:
            self._failed_logins[client] += 1
        else:
            self._failed_logins.pop(client, None)


def prune_folder(folder: str, max_age_s: float, max_bytes: int) -> int:
    """Remove files older than ``max_age_s``, then the oldest until the folder holds at most
    ``max_bytes``; returns how many were removed. Missing files (another pruner) are fine."""
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
    now, removed = time.time(), 0
    files.sort()
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        if now - mtime <= max_age_s and total <= max_bytes:
            break
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
        total -= size
    return removed


def _content_length(scope) -> int:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


def _bad_encoding(raw: bytes) -> bool:
    """True for a raw path whose percent-encoding does not decode to UTF-8."""
    try:
        unquote_to_bytes(raw.decode("ascii", "strict")).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return True
    return False


async def _respond(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
