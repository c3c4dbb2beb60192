"""Hostile input and hard stops: what a web page, an attacker or bad luck can throw at the
project, on the real thing (docs/serve.md, docs/bad-input.md).

* The split stage, run as a user runs it: a full disk (a small tmpfs mounted on data/split
  where the tests may mount one) and a file-size limit end in one ERROR line with the earlier
  outputs intact; non-UTF-8 names, FIFOs, sockets, devices and dangling symlinks are skipped
  and counted, never hang; ``split --check`` names what DVC cannot hash.
* The try-it server (``python -m app.serve`` on the tiny exported pipeline, slow): DNS
  rebinding and cross-origin requests (raw HTTP and headless Chromium), malformed headers,
  security headers on every response, bad options, IPv6, a connection flood, memory bombs
  (8 concurrent 64-megapixel uploads), SIGTERM and SIGHUP under load.

All traffic goes to 127.0.0.1 or ::1; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import command_env, copy_project, run, snapshot, write_images, write_params

from bench.serve_memory import KINDS, measure, png16
from stages.common import paths
from tools.try_page import CHROMIUM, CHROMIUM_ARGS, Server, png

TEMP_PREFIXES = (".tmp-", ".scratch-")

# --- The split stage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("hostile") / "repo")


@pytest.fixture
def repo(project: Path) -> Iterator[Path]:
    """The project copy, params restored and data/split and data/raw emptied after each test."""
    original = (project / paths.PARAMS_FILE).read_bytes()
    yield project
    (project / paths.PARAMS_FILE).write_bytes(original)
    shutil.rmtree(project / paths.SPLIT_DIR, ignore_errors=True)
    shutil.rmtree(project / "data" / "hostile", ignore_errors=True)


def split(repo: Path, *args: str, limit_bytes: int | None = None, **params) -> object:
    """``python -m stages.split`` in ``repo`` with ``params`` (and a file-size limit)."""
    write_params(repo, {"data.image_size": 32, **params})

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "stages.split", *args],
        cwd=repo,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def one_error_line(result, *fragments: str) -> str:
    """Exit status 2 and exactly one ERROR line on stderr, naming ``fragments``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIXES))


@pytest.fixture
def small_disk(repo: Path) -> Iterator[Path]:
    """data/split on a 200 kB tmpfs (root where mounting is allowed), else skip."""
    folder = repo / paths.SPLIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the file-size-limit test covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_split_on_a_full_disk_ends_in_one_line_and_writes_nothing(repo, small_disk):
    result = split(repo, **{"data.source": "digits", "data.max_per_class": 12})
    line = one_error_line(result, "data/split", "needs", "free")
    assert "Bus error" not in result.stderr
    assert list(small_disk.iterdir()) == [], line


def test_a_file_size_limit_mid_write_keeps_the_previous_outputs(repo):
    first = split(repo, **{"data.source": "digits", "data.max_per_class": 12})
    assert first.returncode == 0, first.stderr
    before = snapshot(repo / paths.SPLIT_DIR)
    # The digits again, larger: the scratch array no longer fits the file-size limit.
    again = split(repo, limit_bytes=200_000, **{"data.source": "digits", "data.image_size": 48})
    one_error_line(again, "cannot write", "data/split", "needs", "File too large")
    assert snapshot(repo / paths.SPLIT_DIR) == before, "the earlier outputs, byte for byte"
    assert leftovers(repo / paths.SPLIT_DIR) == []


def hostile_folder(repo: Path) -> Path:
    """Two good classes, plus a non-UTF-8 file, a non-UTF-8 class folder, a FIFO, a socket, a
    device (where mknod is allowed) and a dangling symlink, each named *.png."""
    root = repo / "data" / "hostile"
    write_images(root, {"cat": 6, "dog": 6}, size=24)
    shutil.copy(root / "cat" / "img_000.png", root / "cat" / os.fsdecode(b"caf\xe9.png"))
    latin = root / os.fsdecode(b"\xff-class")
    latin.mkdir()
    shutil.copy(root / "dog" / "img_000.png", latin / "a.png")
    os.mkfifo(root / "cat" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "dog" / "socket.png"))
    sock.close()
    (root / "dog" / "dangling.png").symlink_to(root / "dog" / "deleted.png")
    with contextlib.suppress(OSError):  # mknod needs root
        os.mknod(root / "dog" / "device.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    return root


def test_non_utf8_names_and_special_files_are_skipped_and_counted(repo):
    root = hostile_folder(repo)
    started = time.monotonic()
    result = split(repo, **{"data.source": "folder", "data.folder": str(root)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 100, "a FIFO never makes split wait"
    report = json.loads((repo / paths.SPLIT_REPORT).read_text(encoding="utf-8"))
    assert report["skipped_files"]["undecodable_name"] == ["\\xff-class", "cat/caf\\xe9.png"]
    special = report["skipped_files"]["not_a_regular_file"]
    assert {"cat/pipe.png", "dog/socket.png", "dog/dangling.png"} <= set(special)
    assert report["skipped"]["undecodable_name"] == 2
    # Outputs consistent with each other: every label is a listed class, the manifest reads.
    classes = json.loads((repo / paths.CLASSES).read_text(encoding="utf-8"))
    assert classes == ["cat", "dog"]
    for name in ("train", "val", "test"):
        labels = np.load(repo / paths.split_labels(name), allow_pickle=False)
        assert labels.max() < len(classes)
    manifest = (repo / paths.MANIFEST).read_text(encoding="utf-8")
    assert "caf" not in manifest and len(manifest.splitlines()) == 1 + 12


def test_split_check_names_what_dvc_cannot_hash(repo):
    root = hostile_folder(repo)
    result = split(repo, "--check", **{"data.source": "folder", "data.folder": str(root)})
    line = one_error_line(result, "DVC cannot hash", "cat/pipe.png (FIFO)")
    assert "dog/dangling.png (dangling symlink)" in line and "dog/socket.png (socket)" in line
    assert "\\xff-class (name not UTF-8)" in line and "cat/caf\\xe9.png (name not UTF-8)" in line
    clean = repo / "data" / "hostile_clean"
    write_images(clean, {"cat": 3, "dog": 3})
    try:
        ok = split(repo, "--check", **{"data.source": "folder", "data.folder": str(clean)})
        assert ok.returncode == 0 and "nothing that DVC cannot hash" in ok.stdout, ok.stderr
    finally:
        shutil.rmtree(clean)


# --- The try-it server (slow) -------------------------------------------------------------------

SECURITY = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def raw(port: int, request: bytes, host: str = "127.0.0.1", timeout: float = 60) -> tuple:
    """Send ``request`` as it is; (status, lower-case headers, body) of the answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def post(port: int, body: bytes, headers: dict[str, str] | None = None, host: str = "127.0.0.1"):
    """A POST /predict with ``body`` and extra ``headers`` (Host: 127.0.0.1:port unless given)."""
    fields = {"Host": f"{host}:{port}", "Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    status, answer_headers, answer = raw(
        port, f"POST /predict HTTP/1.1\r\n{head}\r\n".encode() + body, host=host
    )
    return status, answer_headers, json.loads(answer or b"{}")


def has_security_headers(headers: dict[str, str]) -> bool:
    return all(value in headers.get(name, "") for name, value in SECURITY.items())


@pytest.fixture(scope="module")
def served(shipped_repo: Path, tmp_path_factory) -> Iterator[tuple[Server, int]]:
    tmp = tmp_path_factory.mktemp("hostile_serve_tmp")
    server = Server(shipped_repo, env={"TMPDIR": str(tmp)})
    yield server, urllib.parse.urlsplit(server.url).port
    server.stop()


DIGIT = png(np.full((16, 16), 255, np.uint8))


@pytest.mark.slow
def test_rebinding_and_cross_origin_requests_are_refused(served):
    _, port = served
    for host in ("rebind.evil.example", "127.0.0.1.evil.example", "localhost.evil"):
        status, headers, answer = post(port, DIGIT, {"Host": host})
        assert status == 421 and "answers only to" in answer["error"], (host, answer)
        assert has_security_headers(headers)
    status, _, _ = raw(port, f"GET / HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n".encode())
    assert status == 421, "the page itself too"
    cross = [
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        {"Origin": "null"},
        {"Origin": f"http://localhost:{port}"},  # another origin, though the same server
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for extra in cross:
        status, headers, answer = post(port, DIGIT, extra)
        assert status == 403 and "cross-origin" in answer["error"], (extra, answer)
    same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    assert post(port, DIGIT, same)[0] == 200
    assert post(port, DIGIT, {"Host": f"localhost:{port}"})[0] == 200
    assert post(port, DIGIT)[0] == 200, "no Origin at all (curl, scripts): allowed"


@pytest.mark.slow
@pytest.mark.parametrize(
    "length", ["²", "9" * 5000, "-1", "1e3", "+12", "0x10", "12, 13"], ids=repr
)
def test_malformed_content_length_gets_400(served, length):
    _, port = served
    status, headers, answer = post(port, b"", {"Content-Length": length})
    assert status == 400 and "Content-Length" in answer["error"], answer
    assert has_security_headers(headers)
    assert post(port, DIGIT)[0] == 200, "and the server keeps serving"


@pytest.mark.slow
def test_every_response_carries_the_security_headers(served):
    _, port = served
    host = f"Host: 127.0.0.1:{port}\r\n"
    requests = {
        200: f"GET / HTTP/1.1\r\n{host}\r\n",
        404: f"GET /nothing HTTP/1.1\r\n{host}\r\n",
        411: f"POST /predict HTTP/1.1\r\n{host}\r\n",
        413: f"POST /predict HTTP/1.1\r\n{host}Content-Length: 999999999\r\n\r\n",
        501: f"PUT / HTTP/1.1\r\n{host}\r\n",
        400: "GET / HTTP/9.9 extra\r\n\r\n",
        431: f"GET / HTTP/1.1\r\n{host}" + "X-A: b\r\n" * 120 + "\r\n",
        414: "GET /" + "a" * 70_000 + " HTTP/1.1\r\n\r\n",
    }
    for want, request in requests.items():
        status, headers, _ = raw(port, request.encode())
        assert status == want, (want, status)
        assert has_security_headers(headers), (status, headers)
        assert "Python" not in headers.get("server", "")


@pytest.mark.slow
def test_bad_options_are_refused_in_one_line(shipped_repo):
    for option in (
        ["--max-upload-mb", "nan"],
        ["--max-upload-mb", "-1"],
        ["--max-upload-mb", "inf"],
        ["--decode-budget-mb", "0"],
        ["--max-connections", "0"],
        ["--port", "70000"],
        ["--host", "no such host.invalid"],
    ):
        result = run(["python", "-m", "app.serve", *option], shipped_repo, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (option, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), (option, result.stderr)
        assert option[0] in lines[0]


@pytest.mark.slow
def test_ipv6_hosts_work(shipped_repo):
    server = Server(shipped_repo, ["--host", "::1"])
    try:
        port = urllib.parse.urlsplit(server.url).port
        assert server.url.startswith("http://[::1]:")
        assert post(port, DIGIT, host="::1", headers={"Host": f"[::1]:{port}"})[0] == 200
    finally:
        assert server.stop() == 0
    server = Server(shipped_repo, ["--host", "::"])
    try:
        port = urllib.parse.urlsplit(server.url).port
        assert post(port, DIGIT, host="::1", headers={"Host": f"[::1]:{port}"})[0] == 200
        assert post(port, DIGIT)[0] == 200, "IPv4 clients too"
        assert post(port, DIGIT, {"Host": f"evil.example:{port}"})[0] == 421
    finally:
        assert server.stop() == 0


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise KeyError("Threads")


@pytest.mark.slow
def test_a_flood_of_slow_connections_is_capped_with_a_clear_refusal(shipped_repo):
    server = Server(shipped_repo, ["--max-connections", "4"])
    slow: list[socket.socket] = []
    try:
        port = urllib.parse.urlsplit(server.url).port
        base = threads_of(server.process.pid)
        for _ in range(40):  # connect, send half a request line, then nothing
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"POST /pre")
            slow.append(sock)
        time.sleep(1)
        assert threads_of(server.process.pid) <= base + 4
        status, headers, answer = post(port, DIGIT)
        assert status == 503 and "limit" in answer["error"], answer
        assert has_security_headers(headers)
        for sock in slow:
            sock.close()
        deadline = time.monotonic() + 30
        while post(port, DIGIT)[0] != 200:  # the slow ones' threads end as they close
            assert time.monotonic() < deadline, "the server recovers once they are gone"
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()
        assert server.stop() == 0


@pytest.mark.slow
def test_eight_concurrent_memory_bombs_stay_within_the_memory_goal(shipped_repo):
    """Each upload is 7,999 x 7,999 pixels in under 1 MB: a 16-bit PNG, a JPEG, a WebP and a
    16-bit TIFF, two of each, at once. The server's peak resident memory stays within 1.5 GB
    and it returns to its idle level after."""
    server = Server(shipped_repo)
    try:
        result = measure(server, uploads=8)
    finally:
        assert server.stop() == 0
    statuses = {a["file"].split("_")[0]: a["status"] for a in result["answers"]}
    assert statuses == {"png16": 200, "jpeg": 200, "webp": 413, "tiff16": 200}, result
    webp = next(a for a in result["answers"] if a["file"].startswith("webp"))
    assert "MB of memory" in webp["error"]
    assert result["peak_rss_mb"] <= 1500, result
    assert result["after_rss_mb"] <= result["idle_rss_mb"] + 150, result
    assert set(KINDS) == set(statuses)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_and_sighup_under_load_stop_like_ctrl_c(shipped_repo, tmp_path, sig):
    server = Server(shipped_repo, ["--decode-budget-mb", "200"], env={"TMPDIR": str(tmp_path)})
    port = urllib.parse.urlsplit(server.url).port
    bomb = png16()
    n = 6
    gate = threading.Barrier(n + 1)

    def one(i: int):
        gate.wait(timeout=60)
        try:
            status, _, answer = post(port, bomb, {"X-Filename": f"bomb_{i}.png"})
            return status, answer
        except OSError as err:  # no answer at all: what must not happen
            return None, repr(err)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        gate.wait(timeout=60)
        time.sleep(2.0)  # all connected and sent; one decodes, the others wait for memory
        server.process.send_signal(sig)
        answers = [f.result(timeout=120) for f in futures]
    code = server.process.wait(timeout=60)
    output = "".join(server.output)
    assert code == 0, output[-3000:]
    assert f"serve: stopped ({sig.name})" in output
    assert all(status in (200, 503) for status, _ in answers), answers
    assert any(status == 503 for status, _ in answers), "waiting ones are refused, not dropped"
    refused = [a for s, a in answers if s == 503]
    assert all("stopping" in a["error"] for a in refused), refused
    assert list(tmp_path.iterdir()) == [], "the temporary folder goes, uploads with it"


class OtherSite(http.server.ThreadingHTTPServer):
    """Another web site, on [::1]: one blank page, no policy of its own."""

    address_family = socket.AF_INET6

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    def __init__(self) -> None:
        super().__init__(("::1", 0), self.Page)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.slow
def test_a_page_of_another_origin_cannot_post_in_chromium(shipped_repo):
    """Real Chromium: the server's own page posts and is answered; a page of another site
    (on [::1]) posting to it with no-cors and text/plain (no CORS preflight) is refused."""
    if CHROMIUM is None:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail("REQUIRE_CHROMIUM=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    server = Server(shipped_repo)
    port = urllib.parse.urlsplit(server.url).port
    other = OtherSite()
    try:
        with sync_playwright() as p:
            # The usual offline rules, with ::1 reachable too.
            args = [
                a.replace("EXCLUDE 127.0.0.1", "EXCLUDE 127.0.0.1, EXCLUDE ::1")
                for a in CHROMIUM_ARGS
            ]
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            same = page.evaluate(
                """async () => { const r = await fetch('predict', {method: 'POST',
                   body: new Uint8Array([1, 2, 3])}); return [r.status, await r.json()]; }"""
            )
            assert same[0] == 400 and "not a readable image" in same[1]["error"], same
            page.goto(f"http://[::1]:{other.server_address[1]}/")
            page.evaluate(
                f"""async () => {{ try {{ await fetch('http://127.0.0.1:{port}/predict', {{
                   method: 'POST', mode: 'no-cors', headers: {{'Content-Type': 'text/plain'}},
                   body: 'from another origin'}}); }} catch (e) {{}} }}"""
            )
            browser.close()
    finally:
        other.shutdown()
        assert server.stop() == 0
    lines = [line for line in server.output if "POST /predict" in line]
    assert [line.split('" ')[1].split()[0] for line in lines] == ["400", "403"], lines
