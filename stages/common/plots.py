"""The figures evaluate draws (matplotlib, Agg), each saved atomically and byte-reproducibly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stages.common.io import atomic_path

RIGHT, WRONG = "#ffd60a", "#ff3b30"  # the seed's captions: yellow when right, red when wrong
# Fonts with Hangul (Korean class names), used for the glyphs DejaVu Sans lacks where one is
# installed: Linux, Windows, macOS. Without any, matplotlib warns and draws empty boxes.
HANGUL_FONTS = (
    "Noto Sans CJK KR",
    "NanumGothic",
    "Malgun Gothic",
    "Apple SD Gothic Neo",
    "AppleGothic",
)


def new_figure(**kwargs):
    """A matplotlib ``Figure`` drawn by Agg, outside pyplot (no display, no figure manager:
    nothing to close, and pyplot's start-up is skipped where nothing else imports it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib.figure import Figure

    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallback = [name for name in HANGUL_FONTS if name in installed]
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *fallback]
    return Figure(**kwargs)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically, without metadata that would change between runs."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None}, facecolor=fig.get_facecolor())


def draw_confusion(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str], path: Path
) -> None:
    """scikit-learn's confusion matrix display, titled with the accuracy."""
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(5.0, 0.5 * len(classes) + 2)
    fig = new_figure(figsize=(side, side))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        predicted,
        labels=list(range(len(classes))),
        display_labels=classes,
        cmap="Blues",
        colorbar=False,
        ax=ax,
        xticks_rotation="vertical" if max(map(len, classes)) > 3 else "horizontal",
    )
    accuracy = float(np.mean(labels == predicted))
    ax.set_title(f"Test confusion matrix: {accuracy:.2%} of {len(labels)} images")
    fig.tight_layout()
    save_figure(fig, path)


# The gallery is one image: tiles pasted into a black canvas and drawn with a single imshow,
# captions as text above them. (One Axes per tile, plus one per inset, took seconds to lay out.)
TILE = 128  # pixels per tile side in the saved PNG
INSET = 0.34  # the original's inset: this fraction of the tile side, top-left
CAPTION = 26  # pixels above each tile for its caption
GAP = 8  # pixels between tiles
HEADER = 40  # pixels above the grid for the title


def gallery_tile(image: np.ndarray, original: np.ndarray | None) -> np.ndarray:
    """One ``TILE`` x ``TILE`` RGB tile: the image as the model saw it, the original inset."""
    tile = resized_rgb(image, TILE)
    if original is not None:
        side = round(INSET * TILE)
        tile[: side + 2, : side + 2] = 128  # grey frame: seen on white paper and on black
        tile[1 : side + 1, 1 : side + 1] = resized_rgb(original, side)
    return tile


def resized_rgb(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H x W, H x W x 1 or x 3, uint8) as a ``side`` x ``side`` RGB uint8 array:
    pixels repeated when enlarged, area-averaged when reduced."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    picture = Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).convert("RGB")
    enlarge = side >= max(picture.size)
    method = Image.Resampling.NEAREST if enlarge else Image.Resampling.BOX
    return np.array(picture.resize((side, side), method))


def draw_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    classes: list[str],
    title: str,
    path: Path,
    show_truth: bool,
    originals: np.ndarray | None = None,
) -> None:
    """A grid of images on black, each captioned with its prediction: yellow right, red wrong.

    Each tile is the image as the model saw it (after crop, normalisation and fit); with
    ``originals``, the file as it was is inset small in its top-left corner.
    """
    n = len(images)
    cols = min(10, max(n, 1))
    rows = math.ceil(n / cols) if n else 1
    cell_w, cell_h = TILE + GAP, CAPTION + TILE + GAP
    width = max(cols * cell_w + GAP, 600)
    left = (width - cols * cell_w + GAP) // 2
    height = HEADER + rows * cell_h
    canvas = np.zeros((height, width, 3), np.uint8)
    fig = new_figure(figsize=(width / 100, height / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    captions = []
    for i in range(n):
        x = left + (i % cols) * cell_w
        y = HEADER + (i // cols) * cell_h + CAPTION
        original = None if originals is None else originals[i]
        canvas[y : y + TILE, x : x + TILE] = gallery_tile(images[i], original)
        y_true, y_pred = int(labels[i]), int(predicted[i])
        text = f"{classes[y_true]}→{classes[y_pred]}" if show_truth else classes[y_pred]
        captions.append((x + TILE / 2, y - CAPTION / 2, text, RIGHT if y_true == y_pred else WRONG))
    ax.imshow(canvas, interpolation="nearest")
    for x, y, text, color in captions:
        ax.text(x, y, text, color=color, fontsize=12, fontweight="bold", ha="center", va="center")
    if n == 0:
        ax.text(width / 2, HEADER + cell_h / 2, "none", color="white", ha="center", va="center")
    ax.text(width / 2, HEADER / 2, title, color="white", fontsize=12, ha="center", va="center")
    save_figure(fig, path)


def _reliability_axes(ax, counts, reliability: dict, title: str) -> None:
    """One reliability diagram on ``ax`` with its bin counts on ``counts``."""
    lower, width = np.array(reliability["lower"]), 1.0 / reliability["bins"]
    filled = [i for i, c in enumerate(reliability["count"]) if c]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(
        lower[filled],
        [reliability["accuracy"][i] for i in filled],
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy in bin",
    )
    ax.plot(
        [reliability["confidence"][i] for i in filled],
        [reliability["accuracy"][i] for i in filled],
        "o",
        color="#dd8452",
        label="(mean confidence, accuracy)",
    )
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", fontsize=8)
    counts.bar(lower, reliability["count"], width=width, align="edge", color="#8c8c8c")
    counts.set(xlabel="confidence (top-class probability)", ylabel="images", yscale="symlog")


def draw_reliability(
    reliability: dict, n: int, path: Path, calibrated: dict | None = None, temperature: float = 1.0
) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with counts;
    with ``calibrated``, the same after temperature scaling beside it (before | after)."""
    panels = [(reliability, f"Test calibration: ECE {reliability['ece']:.4f} over {n} images")]
    if calibrated is not None:
        panels[0] = (reliability, f"Head as trained: ECE {reliability['ece']:.4f}, {n} images")
        panels.append(
            (calibrated, f"Temperature {temperature:.3f} (val): ECE {calibrated['ece']:.4f}")
        )
    fig = new_figure(figsize=(5.5 * len(panels), 6.5))
    axes = fig.subplots(
        2, len(panels), sharex=True, squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    for column, (values, title) in enumerate(panels):
        _reliability_axes(axes[0, column], axes[1, column], values, title)
    fig.tight_layout()
    save_figure(fig, path)
