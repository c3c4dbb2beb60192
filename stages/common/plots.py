"""The figures evaluate draws (matplotlib, Agg), each saved atomically and byte-reproducibly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stages.common.io import atomic_path

RIGHT, WRONG = "#ffd60a", "#ff3b30"  # the seed's captions: yellow when right, red when wrong


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically, without metadata that would change between runs."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None}, facecolor=fig.get_facecolor())
    plt.close(fig)


def draw_confusion(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str], path: Path
) -> None:
    """scikit-learn's confusion matrix display, titled with the accuracy."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    side = max(5.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
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
    plt = pyplot()
    n = max(len(images), 1)
    cols = min(10, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(1.3 * cols, 6.0), 1.45 * rows + 0.6), squeeze=False
    )
    fig.patch.set_facecolor("black")
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, y, p) in enumerate(zip(axes.flat, images, labels, predicted, strict=False)):
        ax.imshow(image)
        if originals is not None:
            inset = ax.inset_axes((0.0, 0.66, 0.34, 0.34))
            inset.imshow(originals[i])
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_edgecolor("white")
        caption = f"{classes[y]}→{classes[p]}" if show_truth else classes[p]
        ax.set_title(
            caption, color=RIGHT if y == p else WRONG, fontsize=12, fontweight="bold", pad=2
        )
    if len(images) == 0:
        axes.flat[0].text(0.5, 0.5, "none", color="white", ha="center", va="center")
    fig.suptitle(title, color="white", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)


def draw_reliability(reliability: dict, n: int, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with counts."""
    plt = pyplot()
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
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
    ax.set_title(f"Test calibration: ECE {reliability['ece']:.4f} over {n} images")
    ax.legend(loc="center left", fontsize=8)
    counts.bar(lower, reliability["count"], width=width, align="edge", color="#8c8c8c")
    counts.set(xlabel="confidence (top-class probability)", ylabel="images", yscale="symlog")
    fig.tight_layout()
    save_figure(fig, path)
