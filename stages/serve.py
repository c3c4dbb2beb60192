"""Try the model in a browser: ``python -m stages.serve [--host 127.0.0.1] [--port 8000]``.

Serves one self-contained page (``stages/serve.html``: no fonts, scripts or styles from
anywhere else) where a person drops photos or draws a digit and sees the top-3 classes and the
image as the model sees it. Each image goes through what training used: ``decode_image`` with
the exported settings (``models/export/prep.json``), then ``models/classifier.keras``.

The server is the standard library's ``ThreadingHTTPServer``, bound to 127.0.0.1 unless told
otherwise. ``POST /predict`` takes one image file as the raw request body and answers JSON.
What a visitor sends is refused from its Content-Length above ``--max-upload-mb`` before it
is read; a file that is read is written to a private temporary folder only for as long as
``decode_image`` needs it (the folder is removed when the server stops), and nothing is kept.
Bad input (not an image, empty, too large, a decompression bomb) gets a readable message; the
server keeps serving.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common import paths
from stages.common.errors import end_command
from stages.common.images import ImageError, decode_image

PAGE = Path(__file__).with_name("serve.html")
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20
TOP = 3
DECODERS = 2  # images decoded at once: bounds memory when many large files arrive together


class Classifier:
    """The exported bundle behind locks: one prediction at a time, a few decodes at a time."""

    def __init__(self, models: Path, scratch: Path) -> None:
        from stages.common.classifier import load_bundle

        self.bundle = load_bundle(models)
        self.scratch = scratch
        self._model_lock = threading.Lock()
        self._decoders = threading.BoundedSemaphore(DECODERS)
        self.predict(np.zeros((self.bundle.size, self.bundle.size, 3), np.uint8))  # warm up

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """Decode uploaded bytes with ``decode_image``; errors name the upload, not the temp file."""
        with (
            self._decoders,
            tempfile.NamedTemporaryFile(dir=self.scratch, prefix="upload-") as tmp,
        ):
            tmp.write(data)
            tmp.flush()
            try:
                return decode_image(tmp.name, self.bundle.prep)
            except ImageError as err:
                raise ImageError(str(err).replace(tmp.name, name), err.reason) from None

    def predict(self, image: np.ndarray) -> np.ndarray:
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


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), POST /predict (one image as the body -> JSON)."""

    server_version = "digits-serve"
    timeout = 30  # a client that stops sending mid-upload is dropped, not waited for
    classifier: Classifier
    page: bytes
    max_upload: int

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page at {self.path}"})
            return
        self.send_body(HTTPStatus.OK, self.page, "text/html; charset=utf-8")

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/predict":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"nothing to post to at {self.path}"})
            return
        name = urllib.parse.unquote(self.headers.get("X-Filename", "upload"))[:200] or "upload"
        data = self.read_upload(name)
        if data is None:
            return
        try:
            image = self.classifier.decode(data, name)
            probs = self.classifier.predict(image)
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

    def read_upload(self, name: str) -> bytes | None:
        """The request body, or None after refusing it from its Content-Length alone."""
        length = self.headers.get("Content-Length")
        limit_mb = self.max_upload / 1e6
        if length is None or not length.isdigit():
            self.refuse(HTTPStatus.LENGTH_REQUIRED, f"{name}: the upload has no Content-Length.")
            return None
        if int(length) > self.max_upload:
            self.refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name}: {int(length) / 1e6:.1f} MB is more than the {limit_mb:g} MB this page "
                "accepts. Send a smaller image (a few hundred pixels a side is plenty).",
            )
            return None
        return self.rfile.read(int(length))

    def refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer without reading the body, then close the connection (its body is unread)."""
        self.close_connection = True
        self.send_json(status, {"error": message}, close=True)

    def send_json(self, status: HTTPStatus, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_body(status, body, "application/json", close)

    def send_body(self, status: HTTPStatus, body: bytes, kind: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page may load nothing from anywhere: inline script and style, data: images only.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'",
        )
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many visitors (or a test's 50 requests) connecting at once


def make_server(
    classifier: Classifier, host: str, port: int, max_upload: int
) -> ThreadingHTTPServer:
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "classifier": classifier,
            "page": render_page(classifier, max_upload),
            "max_upload": max_upload,
        },
    )
    return Server((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    parser.add_argument(
        "--models", type=Path, default=paths.MODELS_DIR, help="folder holding classifier.keras"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="digits-serve-") as scratch:
        classifier = Classifier(args.models, Path(scratch))
        try:
            server = make_server(classifier, args.host, args.port, int(args.max_upload_mb * 1e6))
        except OSError as err:
            print(
                f"ERROR: cannot listen on {args.host}:{args.port} ({err.strerror}).",
                file=sys.stderr,
            )
            return 2
        host, port = server.server_address[:2]
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"serve: WARNING: bound to {args.host}: other machines can reach this page.")
        print(
            f"serve: {len(classifier.bundle.classes)} classes, {classifier.bundle.size} px; "
            f"open http://{host}:{port}/ (ready in {time.perf_counter() - start:.1f}s; "
            "Ctrl-C stops)",
            flush=True,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("serve: stopped", flush=True)
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    end_command(main())
