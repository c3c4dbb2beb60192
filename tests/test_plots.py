"""The figures evaluate draws, rendered for real by matplotlib: the gallery's tiles, captions and
insets land where they should, in the seed's colours, and the PNG bytes do not change between
runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stages.common import plots

CLASSES = ["0", "1", "숫자"]  # a Korean class name is drawn like any other


def tiles(n: int, side: int = 32, value: int = 0) -> np.ndarray:
    return np.full((n, side, side, 3), value, np.uint8)


def tile_box(i: int, cols: int, width: int) -> tuple[int, int]:
    """Top-left pixel of tile ``i`` in a gallery ``width`` pixels wide."""
    cell_w, cell_h = plots.TILE + plots.GAP, plots.CAPTION + plots.TILE + plots.GAP
    left = (width - cols * cell_w + plots.GAP) // 2
    return left + (i % cols) * cell_w, plots.HEADER + (i // cols) * cell_h + plots.CAPTION


def caption_pixels(png: np.ndarray, i: int, cols: int) -> np.ndarray:
    x, y = tile_box(i, cols, png.shape[1])
    return png[y - plots.CAPTION : y, x : x + plots.TILE].reshape(-1, 3).astype(int)


def count_colour(pixels: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    target = np.array([int(hex_colour[k : k + 2], 16) for k in (1, 3, 5)])
    return int(np.sum(np.abs(pixels - target).max(axis=1) < tolerance))


def test_gallery_captions_yellow_when_right_red_when_wrong(tmp_path: Path) -> None:
    labels, predicted = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 0])
    out = tmp_path / "grid.png"
    plots.draw_gallery(tiles(4, value=255), labels, predicted, CLASSES, "t", out, show_truth=True)
    png = np.array(Image.open(out).convert("RGB"))
    for i, right in enumerate(labels == predicted):
        pixels = caption_pixels(png, i, cols=4)
        yellow, red = count_colour(pixels, plots.RIGHT), count_colour(pixels, plots.WRONG)
        assert (yellow > 20 and red == 0) if right else (red > 20 and yellow == 0), (i, yellow, red)


def test_gallery_tiles_show_the_image_and_the_original_inset(tmp_path: Path) -> None:
    images = np.zeros((12, 32, 32, 3), np.uint8)
    images[:, :, :, 0] = 200  # the model's view: red-ish
    originals = np.zeros((12, 96, 96, 3), np.uint8)
    originals[:, :, :, 2] = 255  # the original: blue
    out = tmp_path / "grid.png"
    labels = np.zeros(12, int)
    plots.draw_gallery(images, labels, labels, CLASSES, "t", out, False, originals=originals)
    png = np.array(Image.open(out).convert("RGB"))
    side = round(plots.INSET * plots.TILE)
    for i in (0, 11):  # 12 images: two rows of 10 columns
        x, y = tile_box(i, cols=10, width=png.shape[1])
        assert tuple(png[y + side // 2, x + side // 2]) == (0, 0, 255)  # inset, top-left
        assert tuple(png[y + plots.TILE - 3, x + plots.TILE - 3]) == (200, 0, 0)
    assert png.shape[0] == plots.HEADER + 2 * (plots.CAPTION + plots.TILE + plots.GAP)


def test_gallery_png_is_byte_identical_between_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 40, 40, 3), dtype=np.uint8)
    labels, predicted = rng.integers(0, 3, 7), rng.integers(0, 3, 7)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for out in (first, second):
        plots.draw_gallery(images, labels, predicted, CLASSES, "same", out, show_truth=True)
    assert first.read_bytes() == second.read_bytes()


def test_empty_gallery_says_none(tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    empty = np.zeros(0, int)
    plots.draw_gallery(tiles(0), empty, empty, CLASSES, "0 misclassified", out, show_truth=True)
    png = np.array(Image.open(out).convert("RGB"))
    assert png.shape[1] >= 600 and png.max() > 200  # title and "none" in white on black


def test_grayscale_and_large_images_fit_their_tiles(tmp_path: Path) -> None:
    big = np.full((2, 300, 300), 255, np.uint8)  # larger than a tile: area-averaged down
    tile = plots.gallery_tile(big[0], None)
    assert tile.shape == (plots.TILE, plots.TILE, 3) and tile.min() == 255
    out = tmp_path / "g.png"
    plots.draw_gallery(big, np.array([0, 1]), np.array([0, 1]), CLASSES, "t", out, False)
    assert out.stat().st_size > 0
