"""Security of the web UI against a real `serve` process: file routes refuse everything outside the
indexed roots and the server's temp folder (traversal, absolute paths, symlinks out, URLs), handlers
refuse photos that are not indexed, the server binds loopback by default, uploads are capped, login
works when asked for, and a full session makes no outbound connection attempt (audit hook)."""

from __future__ import annotations

import http.client
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.app.ui_server import read_outbound, start_server, stop_server

pytestmark = pytest.mark.timeout(300)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET exactly this path (no client-side normalisation of `..` or encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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
    client.predict(str(ui_server.photos), api_name="/index_folder")
    yield {"outside": outside, "secret_photo": secret_photo, "secret_text": secret_text}
    for name in [*links, "page.html"]:
        (ui_server.photos / name).unlink(missing_ok=True)


def file_url(path: str) -> str:
    return "/gradio_api/file=" + path


def test_photo_inside_a_root_is_served(ui_server, planted):
    photo = next(ui_server.photos.glob("test-*.jpg"))
    status, body = http_get(ui_server.port, file_url(str(photo)))
    assert status == 200 and body == photo.read_bytes()


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
    for path in ("/etc/passwd", str(planted["secret_photo"]), f"{ui_server.photos}/link-to-photo.jpg"):
        args = (path, "", "", None, 0.0, 5) if endpoint == "/find_similar" else (path,)
        with pytest.raises(Exception, match="not in the index"):
            client.predict(*args, api_name=endpoint)


def test_chat_refuses_a_picked_photo_that_is_not_indexed(client, planted):
    with pytest.raises(Exception, match="not in the index"):
        client.predict("what is this?", None, str(planted["secret_photo"]), [], 10, 0.0, 3, 0.0, api_name="/chat")


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


def test_upload_size_is_capped(ui_server):
    from app.ui import MAX_UPLOAD

    limit = int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    boundary = "cafeboundary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n"
               f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff" * (limit + 1024) + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", ui_server.port, timeout=60)
    try:
        conn.request("POST", "/gradio_api/upload", body=payload,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        resp = conn.getresponse()
        assert resp.status == 413, (resp.status, resp.read()[:200])
    finally:
        conn.close()


def test_auth_when_asked(tmp_path, tiny_model_dir):
    proc, url, port, _ = start_server(str(tiny_model_dir), tmp_path / "db", tmp_path, ("--auth", "alice:s3cret"))
    try:
        status, _ = http_get(port, "/config")
        assert status == 401
        from gradio_client import Client

        with pytest.raises(Exception):
            Client(url, verbose=False, auth=("alice", "wrong"))
        assert Client(url, verbose=False, auth=("alice", "s3cret")).predict(api_name="/stats")["photos"] == 0
    finally:
        stop_server(proc)


def test_full_session_makes_no_outbound_connections(ui_server, client, planted):
    """Index, search, find similar, pick, chat, fetch files: the audit hook saw no non-loopback address."""
    from gradio_client import handle_file

    client.predict(str(ui_server.photos), api_name="/index_folder")
    _, results, *_ = client.predict("a red circle", None, "", "", None, 0.0, 5, api_name="/search")
    client.predict("", handle_file(results[0]["photo"]), "", "", None, 0.0, 5, api_name="/search")
    client.predict(results[0]["photo"], "", "", None, 0.0, 5, api_name="/find_similar")
    client.predict(results[0]["photo"], api_name="/pick_for_chat")
    q = ui_server.ground_truth["album_questions"][0]["question"]
    client.predict(q, None, "", [], 10, 0.0, 3, 0.0, api_name="/chat")
    client.predict("what is this?", None, results[0]["photo"], [], 10, 0.0, 3, 0.0, api_name="/chat")
    client.predict(api_name="/stats")
    http_get(ui_server.port, "/")
    http_get(ui_server.port, file_url(results[0]["photo"]))
    http_get(ui_server.port, "/gradio_api/file=http://example.com/a.jpg")
    armed = Path(str(ui_server.audit_log) + ".armed").read_text().split()
    assert str(ui_server.proc.pid) in armed  # the hook was installed in this very server
    assert read_outbound(ui_server) == []
