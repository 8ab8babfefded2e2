"""Security of the web UI against a real `serve` process (app/guard.py in front of Gradio): indexed
photos are served by record id only (never by a path from the URL: not skipped files, not hidden ones,
not files next to them), and only to a signed-in browser when there is a login; Gradio's file routes
serve the server's temp folder only (traversal, absolute paths, symlinks out, URLs: 403; NUL bytes and
bad percent-encoding: 400); handlers refuse photos that are not indexed; the model box does not tell
which paths exist; the server binds loopback by default; uploads are capped in size, count and bytes
per client (429); failed logins slow down, in series even when sent at once; a full session makes no
outbound connection attempt (audit hook)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from urllib.parse import quote

import pytest

from app.config import UIConfig
from app.store import photo_id
from tests.app.ui_server import read_outbound, start_server, stop_server

pytestmark = pytest.mark.timeout(300)


def http_request(port: int, method: str, path: str, headers: dict | None = None, body=None,
                 timeout: float = 60) -> tuple[int, dict, bytes]:
    """Send exactly this path (no client-side normalisation of `..` or encoding): (status, headers, body).
    A body that is an iterable of bytes goes out chunked (no Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
        elif body is not None:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        if isinstance(body, bytes):
            conn.send(body)
        elif body is not None:
            for chunk in body:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        headers: dict[str, str] = {}
        for key, value in resp.getheaders():  # repeated headers (Set-Cookie) joined with ", "
            headers[key.lower()] = f"{headers[key.lower()]}, {value}" if key.lower() in headers else value
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    status, _, body = http_request(port, "GET", path, headers)
    return status, body


@pytest.fixture(scope="module")
def client(ui_server):
    from gradio_client import Client

    return Client(ui_server.url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def planted(ui_server, client, tmp_path_factory):
    """The album indexed, plus traps inside the root: symlinks out of it and a non-image file."""
    outside = tmp_path_factory.mktemp("outside")
    secret_photo = outside / "secret.jpg"
    shutil.copy(next(ui_server.photos.glob("test-*.jpg")), secret_photo)
    secret_text = outside / "secret.txt"
    secret_text.write_text("top secret")
    links = {
        "link-to-photo.jpg": secret_photo,  # an image, but outside the roots
        "link-to-secret.jpg": secret_text,
        "link-to-dir": outside,
    }
    for name, target in links.items():
        link = ui_server.photos / name
        if not link.is_symlink():
            link.symlink_to(target)
    (ui_server.photos / "page.html").write_text("<script>alert(1)</script>")
    (ui_server.photos / "fake.jpg").write_text("a text file named like a photo")  # skipped by indexing
    hidden = ui_server.photos / ".hidden"  # hidden folders are not indexed
    hidden.mkdir(exist_ok=True)
    shutil.copy(next(ui_server.photos.glob("test-*.jpg")), hidden / "x.jpg")
    client.predict(str(ui_server.photos), api_name="/index_folder")
    yield {"outside": outside, "secret_photo": secret_photo, "secret_text": secret_text,
           "fake": ui_server.photos / "fake.jpg", "hidden": hidden / "x.jpg"}
    for name in [*links, "page.html", "fake.jpg"]:
        (ui_server.photos / name).unlink(missing_ok=True)
    shutil.rmtree(hidden, ignore_errors=True)


def file_url(path: str) -> str:
    return "/gradio_api/file=" + path


def photo_route(path) -> str:
    return "/photo/" + photo_id(str(path))


def test_indexed_photo_is_served_by_its_record_id(ui_server, planted):
    photo = next(ui_server.photos.glob("test-*.jpg"))
    status, headers, body = http_request(ui_server.port, "GET", photo_route(photo))
    assert status == 200 and body == photo.read_bytes()
    assert headers["content-type"] == "image/jpeg" and headers["x-content-type-options"] == "nosniff"


def test_photo_route_serves_nothing_that_is_not_indexed(ui_server, planted):
    """By id, only what the index holds: a text file named .jpg (skipped), a photo in a hidden folder (not
    walked), photos outside the roots or behind symlinks out of them, ids that are not ids."""
    fake, hidden = planted["fake"], planted["hidden"]
    assert fake.is_file() and hidden.is_file()
    for path in (fake, hidden, planted["secret_photo"], ui_server.photos / "link-to-photo.jpg",
                 ui_server.photos / "page.html", ui_server.album / "ground_truth.json"):
        status, body = http_get(ui_server.port, photo_route(path))
        assert status == 404, (path, status, body[:200])
    for route in ("/photo/", "/photo/" + "0" * 32, "/photo/../../etc/passwd", "/photo/%2e%2e%2fetc%2fpasswd",
                  "/photo/" + photo_id(str(fake)).upper(), "/photo/" + str(fake)):
        status, body = http_get(ui_server.port, route)
        assert status in (404, 400), (route, status)
        assert b"a text file" not in body and b"root:" not in body


def test_file_route_serves_the_temp_folder_only(ui_server, client, planted):
    """Thumbnails (the server's temp folder) are served; the indexed original is not, by path."""
    photo = next(ui_server.photos.glob("test-*.jpg"))
    status, _ = http_get(ui_server.port, file_url(str(photo)))
    assert status == 403
    gallery, *_ = client.predict("a red circle", None, "", "", None, 3, api_name="/search")
    thumbnail = gallery[0]["image"]["path"]
    assert Path(thumbnail).name.endswith(".jpg") and not Path(thumbnail).is_relative_to(ui_server.photos)
    status, body = http_get(ui_server.port, file_url(thumbnail))
    assert status == 200 and body[:3] == b"\xff\xd8\xff"  # a JPEG


@pytest.mark.parametrize("path", [
    "/gradio_api/file=/tmp/x%00.jpg",
    "/gradio_api/file=%00",
    "/gradio_api/file=/tmp/%ff%fe.jpg",  # percent-encoding that is not UTF-8
    "/gradio_api/file=/tmp/%e2%82.jpg",  # a cut UTF-8 sequence
    "/file=/etc/passwd%00.jpg",
])
def test_malformed_file_paths_are_400(ui_server, path):
    status, body = http_get(ui_server.port, path)
    assert status == 400, (path, status, body[:200])


def test_a_raw_nul_byte_is_400(ui_server):
    with socket.create_connection(("127.0.0.1", ui_server.port), timeout=30) as s:
        s.sendall(b"GET /gradio_api/file=/tmp/x\x00.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = s.recv(200)
    assert reply.startswith(b"HTTP/1.1 400"), reply


@pytest.mark.parametrize("make_path", [
    lambda root, o: "/etc/passwd",
    lambda root, o: f"{root}/../../../../../../etc/passwd",
    lambda root, o: f"{root}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    lambda root, o: quote(f"{root}/../../../../../../etc/passwd"),
    lambda root, o: f"{root}/../ground_truth.json",  # next to the root, not inside it
    lambda root, o: str(o["secret_photo"]),  # absolute path outside the roots
    lambda root, o: f"{root}/link-to-photo.jpg",  # symlink out of the root to an image
    lambda root, o: f"{root}/link-to-secret.jpg",  # symlink out of the root to a text file
    lambda root, o: f"{root}/link-to-dir/secret.jpg",  # through a symlinked folder
    lambda root, o: f"{root}/page.html",  # inside the root, but not an image
    lambda root, o: f"{root}/{'broken.jpg'}/../../ground_truth.json",
    lambda root, o: "../../../../etc/passwd",  # relative to the server's working folder
    lambda root, o: "http://example.com/a.jpg",  # Gradio would fetch URLs: an outbound connection
], ids=["etc-passwd", "dotdot", "encoded-dotdot", "quoted-dotdot", "next-to-root", "absolute-outside",
        "symlink-image", "symlink-text", "symlink-dir", "non-image", "dotdot-via-file", "relative", "url"])
def test_file_route_refuses(ui_server, planted, make_path):
    path = make_path(str(ui_server.photos), planted)
    for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
        status, body = http_get(ui_server.port, route + path)
        assert status in (403, 404), (route + path, status, body[:200])
        assert b"top secret" not in body and b"root:" not in body


def test_proxy_route_refused(ui_server):
    status, _ = http_get(ui_server.port, "/gradio_api/proxy=http://example.com/x")
    assert status in (403, 404)


@pytest.mark.parametrize("endpoint", ["/find_similar", "/pick_for_chat"])
def test_handlers_refuse_photos_that_are_not_indexed(client, ui_server, planted, endpoint):
    """A path that is not an indexed photo is refused in the status line (the UI shows failures there, not as
    error toasts) and nothing about the file comes back."""
    for path in ("/etc/passwd", str(planted["secret_photo"]), f"{ui_server.photos}/link-to-photo.jpg"):
        if endpoint == "/find_similar":
            gallery, status, *_ = client.predict(path, "", "", None, 5, api_name=endpoint)
            assert gallery in (None, [], {"__type__": "update"}), gallery  # unchanged: nothing shown
        else:
            picked, status = client.predict(path, api_name=endpoint)
            assert picked in (None, "", {"__type__": "update"}), picked
        assert status.startswith("⚠️") and "not in the index" in status, (path, status)


def test_chat_refuses_a_picked_photo_that_is_not_indexed(client, planted):
    history, gallery, answer, _, status = client.predict(
        "what is this?", None, str(planted["secret_photo"]), [], 10, 0.0, 3, 0.0, api_name="/chat")
    assert status.startswith("⚠️") and "not in the index" in status, status
    assert answer in (None, {}, {"__type__": "update"}) and "top secret" not in str(history), answer


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


def test_default_bind_is_loopback(ui_server):
    from app.__main__ import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert build_parser().parse_args(["demo"]).host == "127.0.0.1"
    assert not build_parser().parse_args(["serve"]).share
    # The running server (started without --host) listens on 127.0.0.1 only.
    assert listening_addresses(ui_server.port) == {"0100007F"}


BOUNDARY = "cafeboundary"


def upload_body(size: int, name: str = "photo.jpg") -> bytes:
    """A multipart upload of one file of ``size`` bytes, as the browser sends it to /gradio_api/upload."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff" * size + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(port: int, body, cookie: str = "") -> tuple[int, bytes]:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if cookie:
        headers["Cookie"] = cookie
    status, _, reply = http_request(port, "POST", "/gradio_api/upload", headers, body)
    return status, reply


def test_upload_size_is_capped(ui_server):
    limit = int(UIConfig().max_file_size.removesuffix("mb")) * 1024 * 1024
    status, reply = upload(ui_server.port, upload_body(limit + 1024, "big.jpg"))
    assert status == 413, (status, reply[:200])


def test_full_session_makes_no_outbound_connections(ui_server, client, planted):
    """Index, search, find similar, pick, chat, fetch files: the audit hook saw no non-loopback address."""
    from gradio_client import handle_file

    client.predict(str(ui_server.photos), api_name="/index_folder")
    *_, results = client.predict("a red circle", None, "", "", None, 5, api_name="/search")
    client.predict("", handle_file(results[0]["photo"]), "", "", None, 5, api_name="/search")
    client.predict(results[0]["photo"], "", "", None, 5, api_name="/find_similar")
    client.predict(results[0]["photo"], api_name="/pick_for_chat")
    q = ui_server.ground_truth["album_questions"][0]["question"]
    client.predict(q, None, "", [], 10, 0.0, 3, 0.0, 5, True, api_name="/chat")
    client.predict("what is this?", None, results[0]["photo"], [], 10, 0.0, 3, 0.0, 5, True, api_name="/chat")
    client.predict(api_name="/stats")
    http_get(ui_server.port, "/")
    assert http_get(ui_server.port, photo_route(results[0]["photo"]))[0] == 200
    http_get(ui_server.port, "/gradio_api/file=http://example.com/a.jpg")
    armed = Path(str(ui_server.audit_log) + ".armed").read_text().split()
    assert str(ui_server.proc.pid) in armed  # the hook was installed in this very server
    assert read_outbound(ui_server) == []


def test_model_box_does_not_tell_which_paths_exist(ui_server, client, planted, tmp_path):
    """A missing path, a folder that holds no model, a file: one message (the path typed, nothing about it),
    and the server keeps its model."""
    before = client.predict(api_name="/stats")["model"]
    messages = set()
    for path in (ui_server.album / "no-such-folder", ui_server.album, ui_server.album / "ground_truth.json",
                 planted["outside"]):
        _, message, *_ = client.predict(str(path), api_name="/load_model")
        assert message.startswith("⚠️") and str(path) in message, message
        messages.add(message.replace(str(path), "PATH"))
    assert len(messages) == 1, messages
    assert "is not a model that can be loaded here" in messages.pop()
    assert client.predict(api_name="/stats")["model"] == before


# ---------------------------------------------------------------------------- a server with a login

AUTH = ("alice", "s3cret")
# Small limits so the tests reach them: (UIConfig field, value) passed as serve --ui-limit NAME=VALUE.
LIMITS = {"max_uploads": 4, "max_upload_total_bytes": 300_000, "login_base_delay_s": 0.05, "login_max_delay_s": 0.2}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, tiny_model_dir):
    """`serve --auth alice:s3cret` with small upload and login limits, a few photos indexed: (port, url, photos)."""
    from gradio_client import Client

    from tests.app.conftest import write_world

    work = tmp_path_factory.mktemp("auth")
    photos = work / "photos"
    write_world(photos, 4, seed=3)
    limits = [arg for name, value in LIMITS.items() for arg in ("--ui-limit", f"{name}={value}")]
    proc, url, port, _ = start_server(str(tiny_model_dir), work / "db", work, ("--auth", ":".join(AUTH), *limits))
    try:
        Client(url, verbose=False, auth=AUTH).predict(str(photos), api_name="/index_folder")
        yield port, url, photos
    finally:
        stop_server(proc)


def login(port: int, password: str) -> tuple[int, str]:
    """POST the login form: (status, the session cookies to send back)."""
    status, headers, _ = http_request(
        port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode({"username": AUTH[0], "password": password}).encode())
    cookies = []
    # Set-Cookie headers come joined with ", " (http_request): each of Gradio's starts with access-token.
    for part in headers.get("set-cookie", "").split(","):
        name_value = part.strip().split(";")[0]
        if name_value.startswith("access-token"):
            cookies.append(name_value)
    return status, "; ".join(cookies)


def test_auth_when_asked(auth_server):
    from gradio_client import Client

    port, url, _ = auth_server
    status, _ = http_get(port, "/config")
    assert status == 401
    with pytest.raises(Exception):
        Client(url, verbose=False, auth=(AUTH[0], "wrong"))
    assert Client(url, verbose=False, auth=AUTH).predict(api_name="/stats")["photos"] == 4


def test_photos_need_a_login(auth_server):
    port, _, photos = auth_server
    photo = sorted(photos.glob("*.jpg"))[0]
    status, body = http_get(port, photo_route(photo))
    assert status == 401 and body != photo.read_bytes()
    status, _ = http_get(port, photo_route(photo), {"Cookie": "access-token-x=forged; access-token-unsecure-x=forged"})
    assert status == 401
    code, cookie = login(port, AUTH[1])
    assert code == 200 and cookie
    status, body = http_get(port, photo_route(photo), {"Cookie": cookie})
    assert status == 200 and body == photo.read_bytes()


def test_uploads_have_a_quota_per_client(auth_server):
    """Count and bytes per window (429 past either); a chunked body without Content-Length counts its bytes,
    and one that alone goes past the byte quota is cut off there (429; it counts as an upload, not its bytes)."""
    port = auth_server[0]
    _, cookie = login(port, AUTH[1])
    chunks = lambda body: (body[i:i + 16_384] for i in range(0, len(body), 16_384))  # noqa: E731
    status, reply = upload(port, chunks(upload_body(400_000)), cookie)  # 400 kB in one chunked body: over 300 kB
    assert status == 429 and b"Upload quota used up" in reply, reply
    assert upload(port, upload_body(120_000), cookie)[0] == 200  # 2nd upload; 120 kB used (the cut one kept none)
    assert upload(port, chunks(upload_body(120_000)), cookie)[0] == 200  # 3rd; 240 kB
    status, reply = upload(port, upload_body(100_000), cookie)  # 100 kB more is over 300 kB
    assert status == 429 and b"Upload quota used up" in reply, reply
    assert upload(port, upload_body(1_000), cookie)[0] == 200  # 4th
    status, reply = upload(port, upload_body(1_000), cookie)
    assert status == 429 and b"Too many uploads: at most 4" in reply, reply


def test_failed_logins_slow_down(auth_server):
    """20 wrong passwords take at least the doubling delays (0, 0.05, 0.1, 0.2, 0.2, ...: 3.55 s), 20 at
    once as long (they are judged one at a time), 20 other requests a fraction of that; the right password
    still works afterwards and resets the delay."""
    port = auth_server[0]
    base, cap = LIMITS["login_base_delay_s"], LIMITS["login_max_delay_s"]
    delays = [0.0] + [min(cap, base * 2 ** (i - 1)) for i in range(1, 20)]

    start = time.monotonic()
    for _ in range(20):
        assert http_get(port, "/config")[0] == 401
    fast = time.monotonic() - start

    start = time.monotonic()
    for _ in range(20):
        assert login(port, "wrong")[0] == 400
    serial = time.monotonic() - start
    assert serial >= sum(delays) * 0.95 and serial > fast + 2.5, (serial, fast)

    codes = []
    threads = [threading.Thread(target=lambda: codes.append(login(port, "wrong")[0])) for _ in range(20)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    parallel = time.monotonic() - start
    assert codes == [400] * 20 and parallel >= 20 * cap * 0.95, parallel

    status, cookie = login(port, AUTH[1])
    assert status == 200 and cookie
    start = time.monotonic()
    assert login(port, AUTH[1])[0] == 200
    assert time.monotonic() - start < cap  # the delay was reset by the good login


def test_ui_limits_are_overridden_by_name():
    from app.config import ConfigError, with_overrides

    limits = with_overrides(UIConfig(), ["max_uploads=3", "temp_max_age_s=0.5", "login-max-delay-s=2",
                                         "max_file_size=5mb"])
    assert (limits.max_uploads, limits.temp_max_age_s, limits.login_max_delay_s, limits.max_file_size) == (
        3, 0.5, 2.0, "5mb")
    assert with_overrides(UIConfig(), []) == UIConfig()
    for bad, wanted in (("max_uploads=many", "of type int"), ("nope=1", "NAME one of"), ("max_uploads", "NAME=VALUE"),
                        ("login_base_delay_s=nan", "finite"), ("max_uploads=-1", ">= 0")):
        with pytest.raises(ConfigError, match=wanted):
            with_overrides(UIConfig(), [bad])


def test_temp_folder_pruning_by_age_then_size(tmp_path):
    """prune_folder (what the guard runs in the background): files past the age go, then the oldest until
    the folder fits its size cap; the newest stay."""
    from app.guard import prune_folder

    now = time.time()
    ages = {"old.jpg": 7200, "b.jpg": 300, "c/d.jpg": 200, "e.jpg": 100}
    for name, age in ages.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - age, now - age))
    assert prune_folder(str(tmp_path), max_age_s=3600, max_bytes=250) == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg")) == ["c/d.jpg", "e.jpg"]
    assert prune_folder(str(tmp_path), max_age_s=3600, max_bytes=250) == 0
