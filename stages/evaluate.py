"""Stage 5, evaluate: score the head on train/val/test and draw what a person needs to see.

The test split is touched here and only here. Outputs:

* ``metrics/metrics.json``: accuracy and loss per split, macro precision/recall/F1 on test,
  image counts, and which weights and layer produced the features (``dvc metrics diff``);
* ``metrics/per_class.json``: per-class precision, recall, F1 and support on test;
* ``plots/predictions.csv``: one row per test image (actual, predicted, confidence), drawn by
  DVC's ``confusion`` templates;
* ``plots/confusion.png``, ``plots/prediction_grid.png`` (the seed's picture: captions yellow
  when right, red when wrong) and ``plots/misclassified.png``.
"""

from __future__ import annotations

import csv
import io
import time

import numpy as np

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import load_npy, read_json, write_json, write_text
from stages.common.params import load_params
from stages.common.plots import draw_confusion, draw_gallery
from stages.common.tf import setup_keras

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.HEAD, paths.FEATURES_DIR, paths.SPLIT_DIR)
WRITES = (
    paths.METRICS,
    paths.PER_CLASS,
    paths.PREDICTIONS,
    paths.CONFUSION,
    paths.PREDICTION_GRID,
    paths.MISCLASSIFIED,
)
MAX_GALLERY = 200


Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (probabilities, labels)


def predict_split(head, split: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for one split's cached features (first ``rows`` only)."""
    features = load_npy(paths.features(split), mmap=True)[:rows]
    labels = load_npy(paths.feature_labels(split))[:rows]
    return head.predict(np.asarray(features), batch_size=1024, verbose=0), labels


def predict_splits(head, n_train: int) -> Predictions:
    """Every split's predictions; train on the original images only, not their augmented copies."""
    return {s: predict_split(head, s, rows=n_train if s == "train" else None) for s in SPLITS}


def split_scores(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss

    return {
        "accuracy": round(float(accuracy_score(labels, probs.argmax(1))), 6),
        "loss": round(float(log_loss(labels, probs, labels=list(range(n_classes)))), 6),
    }


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
    per_class = {
        name: {k.replace("-", "_"): round(float(v), 6) for k, v in report[name].items()}
        for name in classes
    }
    return {k.replace("-score", ""): v for k, v in summary.items()}, per_class


def score(
    predictions: Predictions, classes: list[str], split_report: dict, info: dict
) -> tuple[dict, dict]:
    """metrics.json (scores per split, image counts, which features) and per_class.json."""
    metrics: dict = {s: split_scores(*predictions[s], len(classes)) for s in SPLITS}
    macro, per_class = test_report(*predictions["test"], classes)
    metrics["test"].update(macro)
    n_train = split_report["images"]["train"]
    metrics["images"] = {
        **split_report["images"],
        "train_augmented": info["images"]["train"] - n_train,
        "skipped": sum(split_report["skipped"].values()),
        "noted": sum(split_report["notes"].values()),
    }
    metrics["features"] = {
        "weights": info["weights"]["spec"],
        "weights_source": info["weights"]["source"],
        "weights_sha256": info["weights"]["sha256"],
        "layer": info["layer"],
        "pooling": info["pooling"],
        "image_size": info["image_size"],
    }
    return metrics, per_class


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


def draw_test_figures(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], evaluate: dict
) -> None:
    """The confusion matrix, a seeded grid of ``evaluate.grid_size`` test images, the mistakes."""
    predicted = probs.argmax(1)
    draw_confusion(labels, predicted, classes, paths.CONFUSION)
    images = load_npy(paths.split_images("test"), mmap=True)
    originals = load_npy(paths.TEST_ORIGINALS, mmap=True)
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
        originals=originals[order],
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
        originals=originals[wrong],
    )


def main() -> None:
    evaluate = load_params("evaluate")["evaluate"]
    keras = setup_keras(evaluate["seed"])
    start = time.perf_counter()
    head = keras.saving.load_model(paths.HEAD, safe_mode=True)
    classes = read_json(paths.CLASSES)
    split_report = read_json(paths.SPLIT_REPORT)
    predictions = predict_splits(head, split_report["images"]["train"])
    metrics, per_class = score(predictions, classes, split_report, read_json(paths.FEATURES_INFO))
    # How every image was prepared (crop, normalisation, fit): predict applies the same.
    metrics["prep"] = read_json(paths.PREP)
    write_json(paths.METRICS, metrics)
    write_json(paths.PER_CLASS, per_class)
    write_predictions(*predictions["test"], classes)
    draw_test_figures(*predictions["test"], classes, evaluate)
    print(
        f"evaluate: test accuracy {metrics['test']['accuracy']:.4f} (val {metrics['val']['accuracy']:.4f}, "
        f"train {metrics['train']['accuracy']:.4f}); wrote {paths.METRICS_DIR}/ and {paths.PLOTS_DIR}/ "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
