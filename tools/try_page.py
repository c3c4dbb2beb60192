"""Drive the try-it page (``python -m app.serve``): a server process and a headless Chromium.

Used by ``tests/test_serve.py`` and to take the README's screenshot::

    python -m tools.try_page docs/serve.png [IMAGE ...]   # with models/ from `dvc repro`

which starts the server on a free port, uploads the image files given (or three test images,
already prepared), draws a digit with the mouse and saves a screenshot of the page.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common import paths

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # Offline for real: no host name resolves, only the local server is reachable.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# Strokes on the 280 px pad, as fractions of its side: a "7" (a bar, then the diagonal).
SEVEN = [[(0.25, 0.2), (0.75, 0.2)], [(0.75, 0.2), (0.42, 0.85)]]


class Server:
    """``python -m app.serve --port 0`` in ``repo``; ``url`` once it listens, ``stop()`` ends it."""

    def __init__(
        self, repo: Path, args: Sequence[str] = (), env: dict | None = None, wait: float = 300
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.serve", "--port", "0", *args],
            cwd=repo,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url(wait)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def _wait_for_url(self, wait: float) -> str:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if found := re.search(r"open (http://\S+/)", line):
                return found.group(1)
            if line == "":
                break
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(self.output)[-4000:])

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a person would stop it; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(page, files: Sequence[tuple[str, bytes]]) -> None:
    """Choose files in the page's file input, as a person does."""
    payload = [{"name": n, "mimeType": "image/png", "buffer": data} for n, data in files]
    page.set_input_files("#files", files=payload)


def draw(page, strokes: Sequence[Sequence[tuple[float, float]]], steps: int = 12) -> None:
    """Draw ``strokes`` (polylines in fractions of the pad's side) with real mouse events."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=steps)
        page.mouse.up()


def result(page, name: str, strokes: int | None = None, timeout: float = 60_000):
    """The newest result card for ``name`` once it is answered (ok or error).

    For a drawing, ``strokes`` picks the card answering the drawing of that many strokes.
    """
    drawn = "" if strokes is None else f'[data-strokes="{strokes}"]'
    card = page.locator(f'article.result[data-name="{name}"]{drawn}:not([data-status="pending"])')
    card.first.wait_for(timeout=timeout)
    return card.first


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.try_page OUT.png [IMAGE ...]``: upload the image files given (the
    first three test images when none are) and draw a 7, then save a screenshot."""
    from playwright.sync_api import sync_playwright

    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0] if args else "docs/serve.png")
    if args[1:]:
        files = [(Path(f).name, Path(f).read_bytes()) for f in args[1:]]
    else:
        images, labels = np.load(paths.split_images("test")), np.load(paths.split_labels("test"))
        classes = json.loads(paths.CLASSES.read_text(encoding="utf-8"))
        files = [(f"test image {i} (a {classes[labels[i]]}).png", png(images[i])) for i in range(3)]
    server = Server(Path.cwd())
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1000, "height": 860})
            page.goto(server.url)
            upload(page, files[::-1])
            for name, _ in files:
                result(page, name)
            draw(page, SEVEN)
            page.wait_for_timeout(500)
            result(page, "drawing", strokes=len(SEVEN))
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.stop()
    print(f"try_page: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
