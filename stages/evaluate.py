"""Stage 5, evaluate: score the head on train/val/test and draw what a person needs to see.

It scores the class probabilities that train wrote (``data/predictions/``, the saved head's
output on the cached features), so it needs scikit-learn, SciPy and matplotlib but never
TensorFlow: a head-only iteration starts TensorFlow once, in train. Test labels are read here
and only here. Outputs:

* ``metrics/metrics.json``: per split, accuracy with its 95 % Wilson interval (``accuracy_low``,
  ``accuracy_high``, ``right`` of ``n``) and the plain log-loss (``log_loss``: unsmoothed
  cross-entropy, not the training objective); on test also macro precision/recall/F1, the
  expected calibration error (``ece``, 10 equal-width confidence bins) and the classes with
  fewer than ``SMALL_SUPPORT`` test images; ``paired``: McNemar's test of the head against each
  baseline on the same test images (discordant counts, exact and mid-p values); image counts;
  which weights and layer made the features (``dvc metrics diff``);
* ``metrics/per_class.json``: per-class precision, recall (with its Wilson interval), F1,
  support, and ``small_support`` when the class has fewer than ``SMALL_SUPPORT`` test images;
* ``plots/predictions.csv``: one row per test image (actual, predicted, confidence), drawn by
  DVC's ``confusion`` templates;
* ``plots/confusion.png``, ``plots/prediction_grid.png`` (the seed's picture: captions yellow
  when right, red when wrong), ``plots/misclassified.png`` and ``plots/calibration.png`` (a
  reliability diagram).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.errors import PipelineError, run_stage
from stages.common.io import atomic_path, load_npy, read_json, write_json, write_text
from stages.common.params import load_params
from stages.common.stats import accuracy_with_interval, calibration, mcnemar, wilson_interval

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.PROBS_DIR, paths.FEATURES_INFO, paths.SPLIT_DIR, paths.BASELINES_DIR)
WRITES = (
    paths.METRICS,
    paths.PER_CLASS,
    paths.PREDICTIONS,
    paths.CONFUSION,
    paths.PREDICTION_GRID,
    paths.MISCLASSIFIED,
    paths.CALIBRATION,
)
MAX_GALLERY = 200
SMALL_SUPPORT = 10  # per-class scores on fewer test images than this are flagged
CALIBRATION_BINS = 10
RIGHT, WRONG = "#ffd60a", "#ff3b30"  # the seed's captions: yellow when right, red when wrong


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The head's class probabilities (written by train) and the true labels of one split.

    Train's probabilities cover its original images only, not the augmented copies.
    """
    probs = load_npy(paths.probs(split))
    labels = load_npy(paths.split_labels(split))
    if len(probs) != len(labels):
        raise PipelineError(
            f"{paths.probs(split)} has {len(probs)} rows but {paths.split_labels(split)} has "
            f"{len(labels)} labels: the outputs come from different runs. Run `dvc repro`."
        )
    return probs, labels


def split_scores(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy with its 95 % Wilson interval, and the plain (unsmoothed) log-loss."""
    from sklearn.metrics import log_loss

    return {
        **accuracy_with_interval(probs.argmax(1) == labels),
        "log_loss": round(float(log_loss(labels, probs, labels=list(range(n_classes)))), 6),
    }


def paired_tests(predicted_by_head: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """McNemar's test of the head against each baseline, on the same test images."""
    right = predicted_by_head == labels
    found = {}
    for path in sorted(paths.BASELINES_DIR.glob("*_test_predicted.npy")):
        predicted = load_npy(path)
        if predicted.shape != right.shape:
            raise PipelineError(
                f"{path} has {len(predicted)} predictions for {len(right)} test images: it comes "
                "from another run. Run `dvc repro`."
            )
        test = mcnemar(right, predicted == labels)
        found[path.name.removesuffix("_test_predicted.npy")] = {
            "head_only_right": test["only_a"],
            "baseline_only_right": test["only_b"],
            "p_exact": test["p_exact"],
            "p_mid": test["p_mid"],
        }
    return found


def test_report(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[dict, dict]:
    """Macro scores for metrics.json and the per-class report, from scikit-learn."""
    from sklearn.metrics import classification_report

    report = classification_report(
        labels,
        probs.argmax(1),
        labels=list(range(len(classes))),
        target_names=classes,
        output_dict=True,
        zero_division=0,
    )
    macro = report["macro avg"]
    summary = {f"{k}_macro": round(float(macro[k]), 6) for k in ("precision", "recall", "f1-score")}
    per_class = {}
    for index, name in enumerate(classes):
        scores = {k.replace("-", "_"): round(float(v), 6) for k, v in report[name].items()}
        support = int(scores["support"])
        right = int(np.sum((labels == index) & (probs.argmax(1) == index)))
        low, high = wilson_interval(right, support)
        per_class[name] = {
            **scores,
            "support": support,
            "recall_low": round(low, 6),
            "recall_high": round(high, 6),
            # Below SMALL_SUPPORT test images a class's recall is a coin-toss estimate.
            "small_support": support < SMALL_SUPPORT,
        }
    return {k.replace("-score", ""): v for k, v in summary.items()}, per_class


def write_predictions(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """plots/predictions.csv: one row per test image, for DVC's confusion templates and predict."""
    sources = [row["source"] for row in _manifest() if row["split"] == "test"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "source", "actual", "predicted", "confidence"])
    for i, (p, y) in enumerate(zip(probs, labels, strict=True)):
        writer.writerow([i, sources[i], classes[y], classes[p.argmax()], f"{p.max():.4f}"])
    write_text(paths.PREDICTIONS, buffer.getvalue())


def _manifest() -> list[dict[str, str]]:
    with open(paths.MANIFEST, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically, without metadata that would change between runs."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None}, facecolor=fig.get_facecolor())
    plt.close(fig)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_confusion(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _figure()
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
    _save_figure(fig, paths.CONFUSION)


def draw_reliability(reliability: dict, n: int) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with counts."""
    plt = _figure()
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
    ax.legend(loc="upper left", fontsize=8)
    counts.bar(lower, reliability["count"], width=width, align="edge", color="#8c8c8c")
    counts.set(xlabel="confidence (top-class probability)", ylabel="images", yscale="symlog")
    fig.tight_layout()
    _save_figure(fig, paths.CALIBRATION)


def draw_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    classes: list[str],
    title: str,
    path: Path,
    show_truth: bool,
) -> None:
    """A grid of images on black, each captioned with its prediction: yellow right, red wrong."""
    plt = _figure()
    n = max(len(images), 1)
    cols = min(10, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(1.3 * cols, 6.0), 1.45 * rows + 0.6), squeeze=False
    )
    fig.patch.set_facecolor("black")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, y, p in zip(axes.flat, images, labels, predicted, strict=False):
        ax.imshow(image)
        caption = f"{classes[y]}→{classes[p]}" if show_truth else classes[p]
        ax.set_title(
            caption, color=RIGHT if y == p else WRONG, fontsize=12, fontweight="bold", pad=2
        )
    if len(images) == 0:
        axes.flat[0].text(0.5, 0.5, "none", color="white", ha="center", va="center")
    fig.suptitle(title, color="white", fontsize=12)
    fig.tight_layout()
    _save_figure(fig, path)


def main() -> None:
    evaluate = load_params("evaluate")["evaluate"]
    start = time.perf_counter()
    classes = read_json(paths.CLASSES)
    info = read_json(paths.FEATURES_INFO)
    split_report = read_json(paths.SPLIT_REPORT)
    n_train = split_report["images"]["train"]
    train_rows = int(info["images"]["train"])
    metrics: dict = {}
    for split in SPLITS:
        probs, labels = load_split(split)
        metrics[split] = split_scores(probs, labels, len(classes))
    macro, per_class = test_report(probs, labels, classes)
    reliability = calibration(probs, labels, CALIBRATION_BINS)
    metrics["test"].update(
        macro, ece=reliability["ece"], calibration_max_gap=reliability["max_gap"]
    )
    metrics["test"]["small_support_classes"] = [
        c for c, r in per_class.items() if r["small_support"]
    ]
    metrics["paired"] = paired_tests(probs.argmax(1), labels)
    metrics["images"] = {
        **split_report["images"],
        "train_augmented": train_rows - n_train,
        "skipped": sum(split_report["skipped"].values()),
    }
    metrics["features"] = {
        "weights": info["weights"]["spec"],
        "weights_source": info["weights"]["source"],
        "weights_sha256": info["weights"]["sha256"],
        "layer": info["layer"],
        "pooling": info["pooling"],
        "image_size": info["image_size"],
    }
    write_json(paths.METRICS, metrics)
    write_json(paths.PER_CLASS, per_class)

    predicted = probs.argmax(1)
    write_predictions(probs, labels, classes)
    draw_confusion(labels, predicted, classes)
    draw_reliability(reliability, len(labels))
    images = load_npy(paths.split_images("test"), mmap=True)
    order = np.random.default_rng(evaluate["seed"]).permutation(len(labels))[
        : evaluate["grid_size"]
    ]
    grid_right = int(np.sum(labels[order] == predicted[order]))
    draw_gallery(
        images[order],
        labels[order],
        predicted[order],
        classes,
        f"{grid_right} of {len(order)} test images right ({grid_right / len(order):.2%})",
        paths.PREDICTION_GRID,
        show_truth=False,
    )
    misclassified = np.flatnonzero(labels != predicted)
    n_wrong = len(misclassified)
    wrong = misclassified[:MAX_GALLERY]
    draw_gallery(
        images[wrong],
        labels[wrong],
        predicted[wrong],
        classes,
        f"{n_wrong} misclassified test image{'' if n_wrong == 1 else 's'} (true→predicted)"
        + (f", first {MAX_GALLERY} shown" if len(wrong) == MAX_GALLERY else ""),
        paths.MISCLASSIFIED,
        show_truth=True,
    )
    print(
        f"evaluate: test accuracy {metrics['test']['accuracy']:.4f} (val {metrics['val']['accuracy']:.4f}, "
        f"train {metrics['train']['accuracy']:.4f}); wrote {paths.METRICS_DIR}/ and {paths.PLOTS_DIR}/ "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
