"""The try-it page: a real ``python -m app.serve`` on the tiny exported pipeline, real requests,
and the page in headless Chromium (through Playwright, with the system's Chromium).

The tests of this module share one server and run in file order; the last one stops it and
checks that nothing a visitor sent was kept. Browser tests skip without Chromium or Playwright,
unless REQUIRE_CHROMIUM=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import png_bytes, scanlines
from PIL import Image

from tools.try_page import CHROMIUM, SEVEN, Server, draw, launch_chromium, png, result, upload

pytestmark = pytest.mark.slow
MAX_UPLOAD_MB = 1  # small, so that the browser test of an oversized file stays cheap


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file below ``folder``: enough to show nothing was written."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and ".dvc/tmp" not in str(p)
    }


def source_digits(repo: Path) -> list[np.ndarray]:
    """The test split's digits as their source arrays (dark ink on white, 8x8), in test order.

    Uploading these (not the prepared images) gives exactly split's preparation, and so
    evaluate's predictions: preparing a prepared image again would crop it a second time.
    """
    from sklearn.datasets import load_digits

    with (repo / "data/split/manifest.csv").open() as f:
        sources = [row["source"] for row in csv.DictReader(f) if row["split"] == "test"]
    digits = load_digits().images
    return [
        np.rint(255 - digits[int(s.removeprefix("digits#"))] * (255 / 16)).astype(np.uint8)
        for s in sources
    ]


class Site:
    """The running server, the tiny repository behind it and what the tests compare with."""

    def __init__(self, repo: Path, tmp: Path) -> None:
        self.repo, self.tmp = repo, tmp
        self.before = tree(repo)
        self.server = Server(
            repo, ["--max-upload-mb", str(MAX_UPLOAD_MB)], env={"TMPDIR": str(tmp)}
        )
        split = urllib.parse.urlsplit(self.server.url)
        self.host, self.port = split.hostname, split.port
        self.images = np.load(repo / "data/split/test_images.npy")  # as the model saw them
        self.files = source_digits(repo)  # the same test digits as a user has them (8x8)
        with (repo / "plots/predictions.csv").open() as f:
            self.expected = [row["predicted"] for row in csv.DictReader(f)]
        self.classes = json.loads((repo / "data/split/classes.json").read_text())

    def post(self, body: bytes, name: str = "upload.png") -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request("POST", "/predict", body=body, headers={"X-Filename": name})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def site(shipped_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(shipped_repo, tmp_path_factory.mktemp("serve_tmp"))
    yield site
    site.server.stop()


def needs_browser() -> None:
    reason = None
    if CHROMIUM is None:
        reason = "no chromium on PATH (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -r requirements-dev.txt)"
    if reason:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site: Site) -> Iterator:
    """A fresh tab on the page; fails the test if it asks for anything but the local server."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith((site.server.url, "data:", "blob:"))
            else elsewhere.append(r.url)
        ),
    )
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(site.server.url)
    yield page
    context.close()
    assert not elsewhere, f"the page asked for {elsewhere}"
    assert not errors, f"script errors in the page: {errors}"


def shown_image(card) -> np.ndarray:
    """The 'as the model sees it' image of a result card, decoded from its data: URL."""
    src = card.locator("img").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


# --- The server, with plain HTTP requests --------------------------------------------------------


def test_page_is_local_and_self_contained(site: Site):
    assert site.host == "127.0.0.1"
    conn = http.client.HTTPConnection(site.host, site.port, timeout=60)
    conn.request("GET", "/")
    response = conn.getresponse()
    html = response.read().decode()
    assert response.status == 200
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    assert "http://" not in html and "https://" not in html
    assert json.dumps(site.classes) in html  # the class names, inlined as JSON


def test_a_test_image_gets_its_class_and_the_prepared_image(site: Site):
    status, answer = site.post(png(site.files[0]), "digit.png")
    assert status == 200, answer
    assert answer["name"] == "digit.png"
    assert answer["top"][0]["class"] == site.expected[0]
    assert len(answer["top"]) == 3 and sum(t["probability"] for t in answer["top"]) <= 1 + 1e-6
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"].split(",", 1)[1]))))
    assert np.array_equal(shown, site.images[0])  # prepared exactly as split prepared it


def bomb() -> bytes:
    """A 12 kB PNG that decodes to 10,000 x 10,000 pixels (100 megapixels)."""
    rows = np.zeros((10_000, 1250), np.uint8)  # 1-bit grayscale: 8 pixels a byte
    return png_bytes(10_000, 10_000, 1, 0, scanlines(rows))


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b"this is not an image", "unreadable_image", "not a readable image"),
        (b"", "empty_file", "empty file"),
        (bomb(), "too_large", "Downscale it"),
        (png(np.zeros((8, 8, 3), np.uint8))[:40], "unreadable_image", "not a readable image"),
    ],
    ids=["text", "empty", "decompression-bomb", "truncated-png"],
)
def test_bad_input_gets_a_message_and_the_server_keeps_serving(site, body, reason, words):
    status, answer = site.post(body, "mine.png")
    assert status == 400, answer
    assert answer["reason"] == reason and words in answer["error"]
    assert answer["error"].startswith("mine.png: ")  # the visitor's name, not the temp file's
    assert str(site.tmp) not in answer["error"]
    status, answer = site.post(png(site.files[1]), "next.png")
    assert status == 200 and answer["top"][0]["class"] == site.expected[1]


def test_an_upload_above_the_limit_is_refused_from_its_content_length(site: Site):
    """50 MB announced, nothing sent: the answer comes at once, the body is never waited for."""
    conn = http.client.HTTPConnection(site.host, site.port, timeout=20)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(50_000_000))
    conn.putheader("X-Filename", "huge.jpg")
    conn.endheaders()
    start = time.monotonic()
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 413 and time.monotonic() - start < 10
    assert "huge.jpg: 50.0 MB is more than the 1 MB" in answer["error"]
    conn.close()
    conn = http.client.HTTPConnection(site.host, site.port, timeout=20)
    conn.putrequest("POST", "/predict")  # no Content-Length at all
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    assert site.post(png(site.files[2]))[0] == 200


def test_50_concurrent_requests_are_all_answered(site: Site):
    n = 50
    start = threading.Barrier(n)

    def one(i: int) -> tuple[int, str, str]:
        k = i % len(site.files)
        start.wait(timeout=60)
        status, answer = site.post(png(site.files[k]), f"load_{i}.png")
        return status, answer.get("top", [{}])[0].get("class"), site.expected[k]

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(one, range(n)))
    seconds = time.monotonic() - began
    assert [status for status, _, _ in answers] == [200] * n
    assert [got for _, got, _ in answers] == [want for _, _, want in answers]
    print(f"50 concurrent requests answered in {seconds:.1f} s")


# --- The page, in headless Chromium --------------------------------------------------------------


def test_upload_test_images_in_the_page_shows_their_classes(page, site: Site):
    upload(page, [(f"test_{i}.png", png(site.files[i])) for i in (0, 1, 2)])
    for i in (0, 1, 2):
        card = result(page, f"test_{i}.png")
        assert card.get_attribute("data-status") == "ok"
        assert card.get_attribute("data-top1") == site.expected[i]
        assert card.locator(".bar").count() == 3
        assert card.locator(".bar .cls").first.text_content() == site.expected[i]
        assert np.array_equal(shown_image(card), site.images[i])


def test_draw_a_digit_with_the_mouse_and_get_a_prediction(page, site: Site):
    draw(page, SEVEN)
    card = result(page, "drawing", strokes=2)  # the answer for the whole drawing
    assert page.locator("article.result").count() == 1  # one card, updated after each stroke
    assert card.get_attribute("data-status") == "ok"
    assert card.get_attribute("data-top1") in site.classes
    assert card.locator(".bar").count() == 3
    seen = shown_image(card).astype(int).mean(axis=2)  # 32 x 32, dark ink on white
    assert seen.shape == (32, 32)
    ink = seen < 128
    assert 0.02 < ink.mean() < 0.4, "the strokes arrive as ink on paper"
    # Cropped to the ink with a 15 % margin (data.crop: ink): the 7's bar, drawn at 20 % of
    # the pad's height, lies near row 4 of 32, from about column 7 to 25.
    assert ink[2:7, 9:23].any(axis=0).mean() > 0.8, "the bar of the 7 across the top"
    assert ink[20:, :6].sum() == 0 and ink[:1].sum() == 0, "nothing where nothing was drawn"
    page.click("#clear")
    draw(page, [[(0.5, 0.15), (0.5, 0.85)]])
    card = result(page, "drawing", strokes=1)
    assert page.locator("article.result").count() == 2  # a cleared pad starts a new card
    column = shown_image(card).astype(int).mean(axis=2) < 128
    assert column[8:24, 15:17].all() and column[:, :8].sum() == 0  # a cleared pad, one stroke


def test_a_corrupt_upload_shows_the_message_and_a_good_one_still_works(page, site: Site):
    upload(page, [("broken.png", b"\x89PNG\r\n\x1a\n not really")])
    card = result(page, "broken.png")
    assert card.get_attribute("data-status") == "error"
    assert "broken.png: not a readable image" in card.locator(".message").text_content()
    upload(page, [("empty.png", b"")])
    assert "empty file" in result(page, "empty.png").locator(".message").text_content()
    upload(page, [("large.png", b"\0" * (MAX_UPLOAD_MB * 1_000_000 + 1))])
    assert "more than the 1.0 MB" in result(page, "large.png").locator(".message").text_content()
    upload(page, [("good.png", png(site.files[3]))])
    card = result(page, "good.png")
    assert card.get_attribute("data-status") == "ok"
    assert card.get_attribute("data-top1") == site.expected[3]


def test_page_screenshot_is_not_blank(page, site: Site, tmp_path: Path):
    upload(page, [("test_0.png", png(site.files[0]))])
    result(page, "test_0.png")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(int)
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).mean() > 0.005  # coloured bars


# --- Last: stop it ---------------------------------------------------------------------------------


def test_nothing_a_visitor_sent_is_kept(site: Site):
    scratch = list(site.tmp.iterdir())
    assert len(scratch) == 1 and scratch[0].name.startswith("digits-serve-")
    assert list(scratch[0].iterdir()) == [], "uploads are deleted once decoded"
    assert site.server.stop() == 0, "".join(site.server.output)[-3000:]
    assert "serve: stopped" in "".join(site.server.output)
    assert list(site.tmp.iterdir()) == [], "the temporary folder goes with the server"
    assert tree(site.repo) == site.before, "the server wrote nothing into the repository"
