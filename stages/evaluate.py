"""Stage 5, evaluate: score the head on train/val/test and draw what a person needs to see.

It scores the class probabilities that train wrote (``data/predictions/``, the saved head's
output on the cached features), so it needs scikit-learn, SciPy and matplotlib but never
TensorFlow: a head-only iteration starts TensorFlow once, in train. Test labels are read here
and only here. Outputs:

* ``metrics/metrics.json``, numbers only (what ``dvc metrics diff`` and ``dvc exp show``
  compare): per split, accuracy with its 95 % Wilson interval (``accuracy_low``,
  ``accuracy_high``, ``right`` of ``n``) and the plain log-loss (``log_loss``: unsmoothed
  cross-entropy, not the training objective); on test also macro precision/recall/F1, the
  expected calibration error (``ece``, 10 equal-width confidence bins) and how many classes
  have fewer than ``SMALL_SUPPORT`` test images; ``paired``: McNemar's test of the head against
  each baseline on the same test images (discordant counts, exact and mid-p values); image
  counts. Which weights, layer and preparation made the run stay in ``data/features/info.json``
  and ``data/split/prep.json``;
* ``plots/per_class.csv``: per-class precision, recall (with its Wilson interval), F1,
  support, and ``small_support`` when the class has fewer than ``SMALL_SUPPORT`` test images
  (a table and a plot, not metrics: one column per class would swamp ``dvc exp show``);
* ``plots/predictions.csv``: one row per test image (actual, predicted, confidence), drawn by
  DVC's ``confusion`` templates;
* ``plots/confusion.png``, ``plots/prediction_grid.png`` (the seed's picture: captions yellow
  when right, red when wrong), ``plots/misclassified.png`` and ``plots/calibration.png`` (a
  reliability diagram).
"""

from __future__ import annotations

import csv
import time

import numpy as np

from stages.common import paths
from stages.common.calibration import apply_temperature, fit_temperature
from stages.common.errors import PipelineError, run_stage
from stages.common.io import load_npy, read_json, write_csv, write_json
from stages.common.params import load_params
from stages.common.plots import draw_confusion, draw_gallery, draw_reliability
from stages.common.stats import accuracy_with_interval, calibration, mcnemar, wilson_interval

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.PROBS_DIR, paths.FEATURES_INFO, paths.SPLIT_DIR, *paths.BASELINE_PREDICTIONS)
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


Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (probabilities, labels)


def load_splits() -> Predictions:
    """Every split's predictions; train covers the original images only, not their copies."""
    return {s: load_split(s) for s in SPLITS}


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
    for path in paths.BASELINE_PREDICTIONS:
        if not path.exists():  # evaluate run on its own, before the baselines stages
            continue
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


def score(
    predictions: Predictions, classes: list[str], split_report: dict, info: dict
) -> tuple[dict, dict]:
    """metrics.json (scores per split, paired tests, image counts) and the per-class report."""
    metrics: dict = {s: split_scores(*predictions[s], len(classes)) for s in SPLITS}
    probs, labels = predictions["test"]
    macro, per_class = test_report(probs, labels, classes)
    reliability = calibration(probs, labels, CALIBRATION_BINS)
    metrics["test"].update(
        macro, ece=reliability["ece"], calibration_max_gap=reliability["max_gap"]
    )
    # what the exported model gives: the temperature fitted on val, folded in by export
    temperature = fit_temperature(*predictions["val"])
    metrics["test"]["temperature"] = temperature
    metrics["test"]["ece_calibrated"] = calibration(
        apply_temperature(probs, temperature), labels, CALIBRATION_BINS
    )["ece"]
    metrics["test"]["small_support_classes"] = sum(r["small_support"] for r in per_class.values())
    metrics["paired"] = paired_tests(probs.argmax(1), labels)
    n_train = split_report["images"]["train"]
    metrics["images"] = {
        **split_report["images"],
        "train_augmented": info["images"]["train"] - n_train,
        "skipped": sum(split_report["skipped"].values()),
        "noted": sum(split_report["notes"].values()),
    }
    return metrics, per_class


PER_CLASS_COLUMNS = (
    "precision",
    "recall",
    "recall_low",
    "recall_high",
    "f1_score",
    "support",
    "small_support",
)


def write_per_class(per_class: dict[str, dict]) -> None:
    """plots/per_class.csv: one row per class, drawn by DVC as recall per class."""
    rows = [[name, *(scores[k] for k in PER_CLASS_COLUMNS)] for name, scores in per_class.items()]
    write_csv(paths.PER_CLASS, [["class", *PER_CLASS_COLUMNS], *rows])


def write_predictions(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """plots/predictions.csv: one row per test image, for DVC's confusion templates and predict."""
    sources = [row["source"] for row in _manifest() if row["split"] == "test"]
    rows = [
        [i, sources[i], classes[y], classes[p.argmax()], f"{p.max():.4f}"]
        for i, (p, y) in enumerate(zip(probs, labels, strict=True))
    ]
    write_csv(paths.PREDICTIONS, [["row", "source", "actual", "predicted", "confidence"], *rows])


def _manifest() -> list[dict[str, str]]:
    with open(paths.MANIFEST, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def draw_test_figures(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    evaluate: dict,
    temperature: float = 1.0,
) -> None:
    """The confusion matrix, the reliability diagram (before and after ``temperature``), a seeded grid of ``evaluate.grid_size``
    test images, the mistakes."""
    predicted = probs.argmax(1)
    draw_confusion(labels, predicted, classes, paths.CONFUSION)
    draw_reliability(
        calibration(probs, labels, CALIBRATION_BINS),
        len(labels),
        paths.CALIBRATION,
        calibration(apply_temperature(probs, temperature), labels, CALIBRATION_BINS),
        temperature,
    )
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
    start = time.perf_counter()
    classes = read_json(paths.CLASSES)
    split_report = read_json(paths.SPLIT_REPORT)
    predictions = load_splits()
    metrics, per_class = score(predictions, classes, split_report, read_json(paths.FEATURES_INFO))
    write_json(paths.METRICS, metrics)
    write_per_class(per_class)
    write_predictions(*predictions["test"], classes)
    draw_test_figures(*predictions["test"], classes, evaluate, metrics["test"]["temperature"])
    print(
        f"evaluate: test accuracy {metrics['test']['accuracy']:.4f} (val {metrics['val']['accuracy']:.4f}, "
        f"train {metrics['train']['accuracy']:.4f}); wrote {paths.METRICS_DIR}/ and {paths.PLOTS_DIR}/ "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
