"""The web server's front door: an ASGI middleware in front of Gradio that decides what may be read.

- ``/photo/<record id>``: the original of an indexed photo, looked up in the store by id (never by a
  path from the URL); anything else is 404. Hidden and skipped files are not in the store, so they are
  never served. With a login (--auth), only to a signed-in browser (Gradio's session cookie), as
  Gradio's own routes; 401 otherwise.
- Gradio's file routes (``/gradio_api/file=...``) serve only files inside the server's own temp folder
  (uploads, thumbnails); a malformed path (NUL byte, bad percent-encoding) is 400, anything else 403.
  The proxy route and URLs (Gradio would fetch them: an outbound connection) are 403.
- Uploads: a per-client count and total-size quota over a rolling window (429 past it; the size is
  what the body holds, not only what Content-Length says); the temp folder (uploads, thumbnails) is
  pruned by age and total size in the background, at most every PRUNE_INTERVAL_S.
- Logins: each failed attempt from a client doubles the wait before its next one is looked at, and a
  client's attempts are judged one at a time (sending many at once does not skip the waits).
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
from app.photos import IMAGE_EXTENSIONS, under_any

_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/(file=|file/|proxy=)(.*)$", re.DOTALL)
_UPLOAD_ROUTE = re.compile(r"^(?:/gradio_api)?/upload$")
_LOGIN_ROUTE = re.compile(r"^(?:/gradio_api)?/login/?$")
PHOTO_ROUTE = "/photo/"
_RECORD_ID = re.compile(r"^[0-9a-f]{32}$")
PRUNE_INTERVAL_S = 5.0


def photo_url(record_id: str) -> str:
    """The URL path the original of an indexed photo is served at."""
    return PHOTO_ROUTE + record_id


@dataclass
class _Window:
    """Events of one client within a rolling window: [time, size] (the size of an upload grows while
    its body arrives)."""

    events: deque

    def add(self, now: float, size: int, window: float) -> list:
        event = [now, size]
        self.events.append(event)
        self.prune(now, window)
        return event

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

    def __init__(self, app, photo_file, temp_dir: str, config: UIConfig | None = None, auth: bool = False):
        self.app = app
        self.photo_file = photo_file
        self.temp_dir = os.path.realpath(temp_dir)
        self.config = config or UIConfig()
        self.auth = auth  # the server was started with a login: photos only for signed-in browsers
        self._uploads: dict[str, _Window] = defaultdict(lambda: _Window(deque()))
        self._failed_logins: dict[str, int] = defaultdict(int)
        self._login_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._last_prune = 0.0
        self._pruning = False

    # ----------------------------------------------------------------------------------- routing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        client = (scope.get("client") or ("?", 0))[0]
        self._prune_temp()
        if path.startswith(PHOTO_ROUTE):
            if not self._signed_in(scope):
                return await _respond(send, 401, "Not authenticated.")
            return await self._send_photo(path[len(PHOTO_ROUTE):], send)
        m = _FILE_ROUTE.match(path)
        if m:
            status = self._file_status(scope, *m.groups())
            if status != 200:
                return await _respond(send, status, {400: "Malformed file path.", 403: "File not allowed."}[status])
        elif _UPLOAD_ROUTE.match(path) and scope.get("method") == "POST":
            event, refusal = self._upload_refusal(client, _content_length(scope))
            if refusal:
                return await _respond(send, 429, refusal)
            return await self._upload(scope, receive, send, client, event)
        elif _LOGIN_ROUTE.match(path) and scope.get("method") == "POST":
            return await self._login(scope, receive, send, client)
        return await self.app(scope, receive, send)

    def _signed_in(self, scope) -> bool:
        """Whether the request carries a session of Gradio's login (always true without --auth). Reads
        the session tokens Gradio keeps on its app (scope["app"]); anything unexpected there: refused."""
        if not self.auth:
            return True
        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not isinstance(tokens, dict) or cookie_id is None:
            return False
        cookies = _cookies(scope)
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return bool(token) and token in tokens

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
        return 200 if under_any(real, [self.temp_dir]) else 403

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

    def _upload_refusal(self, client: str, size: int) -> tuple[list | None, str]:
        """(the upload's event in the client's window, "") or (None, why it is refused)."""
        cfg = self.config
        now = time.monotonic()
        window = self._uploads[client]
        window.prune(now, cfg.upload_window_s)
        per = _duration(cfg.upload_window_s)
        if window.count + 1 > cfg.max_uploads:
            return None, f"Too many uploads: at most {cfg.max_uploads} per {per}."
        if window.total + size > cfg.max_upload_total_bytes:
            return None, f"Upload quota used up: at most {_size(cfg.max_upload_total_bytes)} per {per}."
        return window.add(now, size, cfg.upload_window_s), ""

    async def _upload(self, scope, receive, send, client: str, event: list):
        """Pass an admitted upload on, counting its body bytes as they arrive (event[1]), so a body without
        Content-Length (chunked) counts too. One that goes past the client's byte quota is cut off there:
        the app sees the client leave, its response is dropped, and the client gets 429 (the attempt counts
        as an upload, its bytes do not: nothing was kept)."""
        cfg, window = self.config, self._uploads[client]
        room = cfg.max_upload_total_bytes - (window.total - event[1])  # what the quota left for this body
        declared, seen, over = event[1], 0, False

        async def counted():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                event[1] = max(declared, seen)
                if seen > room:
                    over, event[1] = True, 0
                    return {"type": "http.disconnect"}
            return message

        async def answered(message):
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, answered)
        except Exception:
            if not over:
                raise
        if over:
            await _respond(send, 429, f"Upload quota used up: at most {_size(cfg.max_upload_total_bytes)} per "
                                      f"{_duration(cfg.upload_window_s)}.")

    def _prune_temp(self) -> None:
        """In a worker thread, at most every PRUNE_INTERVAL_S: delete temp files past their age, then the
        oldest while the folder is over its size cap (uploads and thumbnails both land there)."""
        now = time.monotonic()
        if self._pruning or now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune, self._pruning = now, True

        def run():
            try:
                prune_folder(self.temp_dir, self.config.temp_max_age_s, self.config.temp_max_bytes)
            finally:
                self._pruning = False

        asyncio.get_running_loop().run_in_executor(None, run)

    # ------------------------------------------------------------------------------------ logins

    def login_delay(self, failures: int) -> float:
        """Seconds a client waits before its next login is judged, after ``failures`` failed ones."""
        if not failures:
            return 0.0
        return min(self.config.login_max_delay_s, self.config.login_base_delay_s * 2 ** (failures - 1))

    async def _login(self, scope, receive, send, client: str):
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        async with self._login_locks[client]:  # one attempt at a time per client: parallel ones queue here
            await asyncio.sleep(self.login_delay(self._failed_logins[client]))
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


def _cookies(scope) -> dict[str, str]:
    """The request's cookies, parsed as Starlette (and so Gradio's login check) parses them."""
    from starlette.requests import cookie_parser

    found: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            found.update(cookie_parser(value.decode("latin-1")))
    return found


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n / 2**10:g} kB" if n >= 2**10 else f"{n} bytes"


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
