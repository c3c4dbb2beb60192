"""Try the model in a browser: ``python -m app.serve [--host 127.0.0.1] [--port 8000]``.

Serves one self-contained page (``app/serve.html``: no fonts, scripts or styles from
anywhere else) where a person drops photos or draws a digit and sees the top-3 classes and the
image as the model sees it. Each image goes through what training used: ``decode_image`` with
the exported settings (``models/export/prep.json``), then ``models/classifier.keras``.

The server is the standard library's HTTP server, bound to 127.0.0.1 unless told otherwise,
with one thread per connection up to ``--max-connections``. ``POST /predict`` takes one image
file as the raw request body and answers JSON. What no web page may make it do (docs/serve.md):

* answer a request whose ``Host`` is not an address it serves (DNS rebinding: 421), or a POST
  that a browser marks as coming from another origin (``Origin``, ``Sec-Fetch-Site``: 403);
* read a body above ``--max-upload-mb`` (refused from ``Content-Length``: 413), or one with a
  malformed ``Content-Length`` (400);
* decode more at once than ``--decode-budget-mb``: each upload's decoded size is worked out
  from its header first; large images are reduced while decoding, what can never fit gets 413,
  what does not fit now waits (503 if it waits too long); memory goes back to the system after;
* hold more than ``--max-connections`` connections (the next one gets 503), or wait for a slow
  client for ever (per-read and whole-body time limits).

Every response, errors included, carries the same security headers. A file that is read is
written to a private temporary folder only while it is decoded; Ctrl-C, SIGTERM and SIGHUP
stop the server alike: no new connection, in-flight requests answered (or refused with 503),
the folder removed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ctypes.util
import io
import ipaddress
import json
import math
import queue
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from stages.common import paths
from stages.common.decode import MAX_PIXELS, ImageError
from stages.common.errors import end_command
from stages.common.prep import ANALYSIS_SIDE, decode_image, prepare_image

PAGE = Path(__file__).with_name("serve.html")
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_DECODE_BUDGET_MB = 640
DEFAULT_MAX_CONNECTIONS = 64
TOP = 3
MB = 1_000_000
READ_TIMEOUT_S = 20  # one read of a header line or body chunk; a silent client is dropped
BODY_TIMEOUT_S = 120  # the whole body: a client trickling bytes is dropped too
BUDGET_WAIT_S = 60  # an upload waits this long for decode memory, then gets 503
STOP_GRACE_S = 20  # on stop, in-flight requests get this long to be answered
EXACT_DECODE_MB = 96  # images that decode within this go through decode_image unchanged
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
# Sent with every response, the server's own error pages included.
SECURITY_HEADERS = {
    # The page may load nothing from anywhere: inline script and style, data: images only; and
    # no other site may frame it.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data: blob:; connect-src 'self'; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request answered with ``status`` and a message instead of a prediction."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- Decode memory ---------------------------------------------------------------------------

# Bytes per pixel of Pillow's decoded image, by mode (every other mode takes 4).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Extra bytes per pixel that decode_image's conversion to 8-bit RGB takes at its peak.
CONVERSION_BYTES = {"RGB": 4, "I": 28, "F": 28, "RGBA": 16, "LA": 16, "PA": 16, "P": 16}
# Decoders that hold full-size buffers of their own (Pillow's WebP: libwebp's RGBA, copies).
FORMAT_FACTOR = {"WEBP": 4.0}
REDUCED_OVERHEAD = 1.25  # the decoded image plus its reduced copy


@dataclass(frozen=True)
class DecodePlan:
    """How one upload is decoded, and the memory that decoding may take at its peak."""

    width: int
    height: int
    mode: str
    reduce_by: int  # 1: decode_image as in training; n: reduced n times while decoding
    cost: int  # bytes reserved from the server-wide budget while it decodes


def plan_decode(img: Image.Image, side: int) -> DecodePlan:
    """The decode plan of an opened (header only, already drafted) image.

    An image whose full decode and conversion fit ``EXACT_DECODE_MB`` goes through
    ``decode_image`` exactly as in training. A larger one is decoded, reduced at once (box
    average) to no less than ``side`` pixels on its long side, then prepared the same way.
    """
    width, height = img.size
    pixels = width * height
    decoded = pixels * MODE_BYTES.get(img.mode, 4) * FORMAT_FACTOR.get(img.format or "", 1.0)
    mode = "I" if img.mode.startswith("I") else img.mode
    exact = decoded + pixels * CONVERSION_BYTES.get(mode, 4)
    if exact <= EXACT_DECODE_MB * MB or max(width, height) < 2 * side:
        return DecodePlan(width, height, img.mode, 1, int(exact))
    reduce_by = max(width, height) // side
    return DecodePlan(width, height, img.mode, reduce_by, int(decoded * REDUCED_OVERHEAD))


class MemoryBudget:
    """Bytes that decodes may hold at once; a decode waits until its share is free."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.stopping = False
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int, name: str, wait: float = BUDGET_WAIT_S) -> Iterator[None]:
        if cost > self.total:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name}: decoding it would take {cost / MB:,.0f} MB of memory, more than the "
                f"{self.total / MB:,.0f} MB this server decodes at once. Send a smaller image "
                "(a few hundred pixels a side is plenty).",
            )
        with self._changed:
            fits = self._changed.wait_for(
                lambda: self.stopping or self.used + cost <= self.total, timeout=wait
            )
            if self.stopping:
                raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, f"{name}: the server is stopping.")
            if not fits:
                raise Refused(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"{name}: the server is busy decoding other large images; try again soon.",
                )
            self.used += cost
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                idle = self.used == 0
                self._changed.notify_all()
            if idle:
                return_memory()

    def stop(self) -> None:
        with self._changed:
            self.stopping = True
            self._changed.notify_all()


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError, TypeError):
        return None


LIBC = _libc()
M_MMAP_THRESHOLD = -3


def keep_large_blocks_returnable() -> None:
    """Let glibc hand every block above 1 MB straight back to the system when it is freed.

    By default glibc raises its mmap threshold after large frees (up to 32 MB), so Pillow's
    16 MB image blocks end up in per-thread heaps that keep their pages after a decode.
    """
    if LIBC is not None:
        LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def return_memory() -> None:
    """Give the heaps' free pages back to the system (glibc's ``malloc_trim``)."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def decode_reduced(path: Path, plan: DecodePlan, prep) -> np.ndarray:
    """Decode a large image, reduce it ``plan.reduce_by`` times at once, then prepare it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (prep.draft_size, prep.draft_size))
                img.load()
                size = (
                    math.ceil(img.width / plan.reduce_by),
                    math.ceil(img.height / plan.reduce_by),
                )
                # Palette and 1-bit images cannot be averaged: every n-th pixel.
                resample = (
                    Image.Resampling.NEAREST if img.mode in ("P", "1") else Image.Resampling.BOX
                )
                small = img.resize(size, resample)
        return prepare_image(ImageOps.exif_transpose(small), prep)
    except MemoryError:
        raise
    except Exception as err:  # as decode_image: a damaged file is this upload's problem
        raise ImageError(
            f"{path}: not a readable image ({type(err).__name__}: {err}). "
            "Delete it, re-export it, or move it out of the folder."
        ) from None


def read_plan(path: Path, side: int, draft_side: int) -> DecodePlan | None:
    """The decode plan from the file's header, or None when decode_image should judge it
    (not an image, empty, above MAX_PIXELS: it refuses those from the header with a message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    return None
                img.draft("RGB", (draft_side, draft_side))
                return plan_decode(img, side)
    except Exception:
        return None


# --- The model -------------------------------------------------------------------------------


class Classifier:
    """The exported bundle: one prediction at a time, decodes within a memory budget."""

    def __init__(self, models: Path, scratch: Path, budget: MemoryBudget) -> None:
        from app.classifier import load_bundle

        self.bundle = load_bundle(models)
        self.scratch = scratch
        self.budget = budget
        self._model_lock = threading.Lock()
        self.predict(np.zeros((self.bundle.size, self.bundle.size, 3), np.uint8))  # warm up

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """Decode uploaded bytes as training did; errors name the upload, not the temp file."""
        prep = self.bundle.prep
        side = max(ANALYSIS_SIDE, prep.draft_size)
        with tempfile.NamedTemporaryFile(dir=self.scratch, prefix="upload-") as tmp:
            tmp.write(data)
            tmp.flush()
            path = Path(tmp.name)
            plan = read_plan(path, side, prep.draft_size)
            cost = plan.cost if plan else 0
            try:
                with self.budget.reserve(cost, name):
                    if plan is None or plan.reduce_by == 1:
                        return decode_image(path, prep)
                    return decode_reduced(path, plan, prep)
            except ImageError as err:
                raise ImageError(str(err).replace(tmp.name, name), err.reason) from None

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The model's probabilities for one prepared image."""
        with self._model_lock:
            return np.asarray(self.bundle.model.predict_on_batch(image[None]))[0]

    def top(self, probs: np.ndarray) -> list[dict]:
        best = np.argsort(-probs, kind="stable")[:TOP]
        return [
            {"class": self.bundle.classes[k], "probability": round(float(probs[k]), 6)}
            for k in best
        ]


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_page(classifier: Classifier, max_upload: int) -> bytes:
    settings = {
        "classes": classifier.bundle.classes,
        "size": classifier.bundle.size,
        "maxUpload": max_upload,
        "top": TOP,
    }
    # Inside a <script> block: keep "</script>" and friends from closing it early.
    blob = json.dumps(settings).replace("<", "\\u003c")
    return PAGE.read_text(encoding="utf-8").replace("/*SETTINGS*/{}", blob).encode("utf-8")


# --- Who may ask -----------------------------------------------------------------------------


def url_host(host: str) -> str:
    """``host`` as it appears in a URL and a Host header: IPv6 addresses in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host.lower()


def split_host_header(value: str) -> str | None:
    """The host part of a Host header (``name``, ``1.2.3.4``, ``[::1]``), lower case; None if
    it is malformed."""
    value = value.strip().lower()
    match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::[0-9]{1,5})?", value)
    return match.group(1) if match else None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The names a request may use for this server (its Host header), from ``--host``."""

    names: frozenset[str]
    any_address: bool  # bound to every interface: any IP address is this server

    @classmethod
    def for_host(cls, host: str) -> Access:
        wildcard = host in ("", "0.0.0.0", "::")
        return cls(frozenset({*LOCAL_NAMES, url_host(host)}), wildcard)

    def allows(self, host: str) -> bool:
        """True for a name this server answers to. A browser sends the name it resolved, so a
        page of evil.example rebound to 127.0.0.1 still says ``Host: evil.example``; an IP
        address cannot be rebound, and is allowed when the server listens on all of them."""
        return host in self.names or (self.any_address and is_ip_literal(host))


# --- HTTP ------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), POST /predict (one image as the body -> JSON)."""

    server_version = "digits-serve"

    def version_string(self) -> str:
        return self.server_version  # no Python version for visitors

    timeout = READ_TIMEOUT_S  # each read; a client that stops sending is dropped
    # Answer even a malformed request line with a status line and headers (the base class
    # would send an HTTP/0.9 body alone, without the security headers).
    default_request_version = "HTTP/1.0"
    classifier: Classifier
    page: bytes
    max_upload: int
    access: Access

    def end_headers(self) -> None:
        """Every response, the base class's own error pages (400, 414, 431, 501) included,
        carries the security headers."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        if not self.checked_host():
            return
        if urllib.parse.urlsplit(self.path).path != "/":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page at {self.path}"})
            return
        self.send_body(HTTPStatus.OK, self.page, "text/html; charset=utf-8")

    def do_POST(self) -> None:
        if not (self.checked_host() and self.checked_origin()):
            return
        if urllib.parse.urlsplit(self.path).path != "/predict":
            self.refuse(HTTPStatus.NOT_FOUND, f"nothing to post to at {self.path}")
            return
        name = urllib.parse.unquote(self.headers.get("X-Filename", "upload"))[:200] or "upload"
        try:
            data = self.read_upload(name)
            image = self.classifier.decode(data, name)
            probs = self.classifier.predict(image)
        except Refused as err:
            self.refuse(err.status, str(err))
            return
        except (TimeoutError, ConnectionError):  # the client went silent or away: no one to answer
            self.close_connection = True
            return
        except ImageError as err:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(err), "reason": err.reason})
            return
        except Exception as err:  # anything else is this request's problem, not the server's
            self.log_error("predict failed for %r: %s: %s", name, type(err).__name__, err)
            self.send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"{name}: could not be classified ({type(err).__name__}: {err})."},
            )
            return
        self.send_json(
            HTTPStatus.OK,
            {"name": name, "top": self.classifier.top(probs), "image": png_data_url(image)},
        )

    def checked_host(self) -> bool:
        """True if the Host header names this server; else refuse (DNS rebinding)."""
        raw = self.headers.get("Host")
        host = split_host_header(raw) if raw is not None else None
        if host is not None and self.access.allows(host):
            return True
        allowed = ", ".join(sorted(self.access.names))
        self.refuse(
            HTTPStatus.MISDIRECTED_REQUEST,
            f"this server answers only to {allowed}, not to Host {raw!r}: open it by one of "
            "those names (other names are refused, so that no web site can reach it through "
            "its own domain).",
        )
        return False

    def checked_origin(self) -> bool:
        """True unless the browser says the request comes from another origin; else refuse."""
        origin = self.headers.get("Origin")
        site = self.headers.get("Sec-Fetch-Site")
        own = f"http://{self.headers.get('Host', '').strip().lower()}"
        if site not in (None, "same-origin", "none") or (
            origin is not None and origin.lower() != own
        ):
            self.refuse(
                HTTPStatus.FORBIDDEN,
                f"cross-origin request refused (Origin {origin!r}, Sec-Fetch-Site {site!r}): "
                f"only the page at {own}/ may post here.",
            )
            return False
        return True

    def read_upload(self, name: str) -> bytes:
        """The request body; refused from its Content-Length alone when malformed or too big."""
        lengths = self.headers.get_all("Content-Length") or []
        limit_mb = self.max_upload / MB
        if self.headers.get("Transfer-Encoding") is not None or not lengths:
            raise Refused(
                HTTPStatus.LENGTH_REQUIRED,
                f"{name}: the upload has no Content-Length (send the file as the body).",
            )
        if len(set(lengths)) != 1 or not re.fullmatch(r"[0-9]{1,15}", lengths[0].strip()):
            raise Refused(
                HTTPStatus.BAD_REQUEST,
                f"{name}: malformed Content-Length {lengths[0][:40]!r}: expected one number "
                "of bytes.",
            )
        length = int(lengths[0])
        if length > self.max_upload:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name}: {length / MB:.1f} MB is more than the {limit_mb:g} MB this page "
                "accepts. Send a smaller image (a few hundred pixels a side is plenty).",
            )
        return self.read_body(length, name)

    def read_body(self, length: int, name: str) -> bytes:
        deadline = time.monotonic() + BODY_TIMEOUT_S
        chunks, left = [], length
        while left:
            chunk = self.rfile.read1(min(left, 1 << 16))
            if not chunk:
                raise Refused(HTTPStatus.BAD_REQUEST, f"{name}: the upload ended early.")
            chunks.append(chunk)
            left -= len(chunk)
            if time.monotonic() > deadline:
                raise Refused(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"{name}: the upload took more than {BODY_TIMEOUT_S} s.",
                )
        return b"".join(chunks)

    def refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer without reading (the rest of) the body, then close the connection."""
        self.close_connection = True
        self.send_json(status, {"error": message}, close=True)
        self.linger()

    def linger(self, seconds: float = 1.0, most: int = 1 << 20) -> None:
        """Half-close, then read and drop what the client is still sending (a moment, a
        megabyte at most) before closing: closing on unread data would reset the connection,
        and the client could lose the answer before reading it."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(seconds)
            deadline, read = time.monotonic() + seconds, 0
            while read < most and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                read += len(chunk)

    def send_json(self, status: HTTPStatus, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_body(status, body, "application/json", close)

    def send_body(self, status: HTTPStatus, body: bytes, kind: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def raw_response(status: HTTPStatus, message: str) -> bytes:
    """A whole HTTP response as bytes, for refusing a connection no handler thread takes."""
    body = json.dumps({"error": message}).encode("utf-8")
    head = [f"HTTP/1.0 {status.value} {status.phrase}", "Content-Type: application/json"]
    head += [f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in SECURITY_HEADERS.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once; the next is answered
    503 by a single refusing thread, so neither slow clients nor a flood can exhaust threads."""

    daemon_threads = True
    request_queue_size = 128  # many visitors (or a test's 50 requests) connecting at once

    def __init__(self, address, handler, max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._active = 0
        self._active_changed = threading.Condition()
        self._refusals: queue.Queue[socket.socket] = queue.Queue(maxsize=256)
        self._busy = raw_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"the server already has {max_connections} connections open (its limit); "
            "try again soon.",
        )
        threading.Thread(target=self._refuse_forever, daemon=True).start()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError):  # "::" takes IPv4 clients too where it can
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        with self._active_changed:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if full:
            try:
                self._refusals.put_nowait(request)
            except queue.Full:
                self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_changed:
                self._active -= 1
                self._active_changed.notify_all()

    def _refuse_forever(self) -> None:
        while True:
            request = self._refusals.get()
            try:
                request.settimeout(0.5)
                with contextlib.suppress(OSError):
                    request.recv(1 << 16)  # the request, so that closing does not reset it
                request.sendall(self._busy)
            except OSError:
                pass
            finally:
                self.shutdown_request(request)

    def wait_for_requests(self, timeout: float) -> int:
        """Wait until no connection is being served (at most ``timeout``); return how many are."""
        with self._active_changed:
            self._active_changed.wait_for(lambda: self._active == 0, timeout=timeout)
            return self._active


def make_server(
    classifier: Classifier, host: str, port: int, max_upload: int, max_connections: int
) -> Server:
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "classifier": classifier,
            "page": render_page(classifier, max_upload),
            "max_upload": max_upload,
            "access": Access.for_host(host),
        },
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("BoundServer", (Server,), {"address_family": family})
    return server_class((host, port), handler, max_connections)


# --- Options and the main loop ---------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """Bad options end the command with one ``ERROR:`` line, not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"ERROR: {message} (python -m app.serve --help lists them).", file=sys.stderr)
        sys.exit(2)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB above 0")
    return value


def count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def port_number(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m app.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind: 127.0.0.1 (default), ::1, 0.0.0.0, ::"
    )
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="0: any free one")
    parser.add_argument(
        "--models", type=Path, default=paths.MODELS_DIR, help="folder holding classifier.keras"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive_number,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--decode-budget-mb",
        type=positive_number,
        default=DEFAULT_DECODE_BUDGET_MB,
        help="memory that decoding uploads may take at once, in MB "
        f"(default {DEFAULT_DECODE_BUDGET_MB})",
    )
    parser.add_argument(
        "--max-connections",
        type=count,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"connections served at once (default {DEFAULT_MAX_CONNECTIONS})",
    )
    args = parser.parse_args(argv)
    try:
        socket.getaddrinfo(args.host or None, args.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        parser.error(f"argument --host: cannot use {args.host!r} ({err})")
    return args


class Stop(Exception):
    """SIGTERM or SIGHUP: stop as Ctrl-C does."""


def stop_on_signals() -> None:
    def stop(signum, frame) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def ignore_signals() -> None:
    """While stopping: a second Ctrl-C or SIGTERM must not cut the cleanup short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def serve(server: Server, budget: MemoryBudget) -> str:
    """Serve until Ctrl-C, SIGTERM or SIGHUP; then stop taking connections, refuse decodes
    not yet started, let in-flight requests be answered; return what stopped it."""
    try:
        server.serve_forever()
        why = "shutdown"
    except KeyboardInterrupt:
        why = "Ctrl-C"
    except Stop as err:
        why = str(err)
    ignore_signals()
    server.socket.close()  # no new connections; in-flight ones keep their own sockets
    budget.stop()
    left = server.wait_for_requests(STOP_GRACE_S)
    if left:
        print(f"serve: {left} request(s) still running after {STOP_GRACE_S} s were dropped")
    return why


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    keep_large_blocks_returnable()
    start = time.perf_counter()
    budget = MemoryBudget(int(args.decode_budget_mb * MB))
    try:
        with tempfile.TemporaryDirectory(prefix="digits-serve-") as scratch:
            classifier = Classifier(args.models, Path(scratch), budget)
            try:
                server = make_server(
                    classifier,
                    args.host,
                    args.port,
                    int(args.max_upload_mb * MB),
                    args.max_connections,
                )
            except OSError as err:
                print(
                    f"ERROR: cannot listen on {args.host}:{args.port} ({err.strerror or err}).",
                    file=sys.stderr,
                )
                return 2
            host, port = server.server_address[:2]
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                print(f"serve: WARNING: bound to {args.host}: other machines can reach this page.")
            print(
                f"serve: {len(classifier.bundle.classes)} classes, {classifier.bundle.size} px; "
                f"open http://{url_host(host)}:{port}/ (ready in "
                f"{time.perf_counter() - start:.1f}s; Ctrl-C stops)",
                flush=True,
            )
            why = serve(server, budget)
            print(f"serve: stopped ({why})", flush=True)
    except (KeyboardInterrupt, Stop) as err:  # while loading the model
        print(f"serve: stopped before it was ready ({err or 'Ctrl-C'})", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    end_command(main())
