"""Stage baselines: plain scikit-learn classifiers on the same split, to show what the head beats.

Three baselines, each with its hyper-parameters chosen on val only by the head's own rule (the
lowest val log-loss, ``train.monitor``; ties go to the first, most regularised, setting),
fitted on the training images and scored once on test:

* ``logreg_pixels``: logistic regression on raw pixels;
* ``svm_rbf_pixels``: an RBF support vector machine on raw pixels (probabilities by Platt
  scaling, ``CalibratedClassifierCV(SVC(), ensemble=False)``);
* ``logreg_features``: logistic regression on the cached ResNet50 features, standardised.

``baselines.train_on``: ``original`` fits them on the split's training images only;
``augmented`` on the same set as the head, the training images plus augment's copies (pixels
of ``data/augmented``, the features extract cached for them), so that head and baselines
compare on equal terms.

Raw pixels: each image (``data.image_size`` RGB) is converted to grayscale and area-averaged
down to ``baselines.pixel_size`` square (8: scikit-learn's digits at their own resolution),
scaled to [0, 1]. No TensorFlow is imported here.

Outputs: ``metrics/baselines.json`` (per baseline: val log-loss and accuracy, test accuracy
with its Wilson interval, the chosen setting) and ``data/baselines/<name>_test_predicted.npy``
(each test image's predicted class), from which evaluate runs the paired McNemar test of the
head against each baseline on the same test images.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import load_npy, save_npy, write_json
from stages.common.params import load_params
from stages.common.stats import accuracy_with_interval

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (
    *(p for s in SPLITS for p in (paths.split_images(s), paths.split_labels(s))),
    paths.AUGMENTED_DIR,
    paths.FEATURES_DIR,
)
WRITES = (paths.BASELINES, paths.BASELINES_DIR)
LOGREG_C = (0.001, 0.01, 0.1, 1.0, 10.0)
SVM_C = (1.0, 10.0, 100.0)
SVM_GAMMA_SCALE = (0.5, 1.0, 2.0)  # times scikit-learn's gamma="scale", 1 / (d * var(X))

Data = dict[str, tuple[np.ndarray, np.ndarray]]


def to_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """(n, s, s, 3) uint8 -> (n, size * size) float32 in [0, 1]: grayscale, area-averaged."""
    rows = [
        np.asarray(Image.fromarray(image).convert("L").resize((size, size), Image.Resampling.BOX))
        for image in images
    ]
    return (np.stack(rows).reshape(len(images), -1) / 255.0).astype(np.float32)


def pixel_data(size: int, augmented: bool) -> Data:
    """Pixels per split; with ``augmented`` train also holds augment's copies (after the originals)."""
    data = {
        split: (
            to_pixels(load_npy(paths.split_images(split), mmap=True), size),
            load_npy(paths.split_labels(split)),
        )
        for split in SPLITS
    }
    if augmented:
        copies = to_pixels(load_npy(paths.AUGMENTED_IMAGES, mmap=True), size)
        x, y = data["train"]
        data["train"] = (
            np.concatenate([x, copies]),
            np.concatenate([y, load_npy(paths.AUGMENTED_LABELS)]),
        )
    return data


def feature_data(augmented: bool) -> Data:
    """The cached features; train keeps only the original training images (the first rows)
    unless ``augmented``, when it keeps every row, copies included, as the head trains on."""
    n_train = len(load_npy(paths.split_labels("train")))
    data = {}
    for split in SPLITS:
        features = load_npy(paths.features(split), mmap=True)
        labels = load_npy(paths.feature_labels(split))
        rows = n_train if split == "train" and not augmented else len(labels)
        data[split] = (np.asarray(features[:rows], dtype=np.float32), labels[:rows])
    return data


def logreg(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))


def svm_rbf(C: float, gamma: float):
    """An RBF SVM with Platt-scaled probabilities (5-fold, unshuffled: deterministic), the form
    scikit-learn 1.9 recommends over the deprecated ``SVC(probability=True)``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    return CalibratedClassifierCV(SVC(C=C, gamma=gamma, kernel="rbf"), ensemble=False)


def select_on_val(
    make: Callable[..., Any], grid: list[dict[str, float]], data: Data
) -> dict[str, Any]:
    """Fit every setting on train, keep the lowest val log-loss (first on ties), score it on test.

    Returns the record for metrics/baselines.json and the test images' predicted classes.
    """
    from sklearn.metrics import log_loss

    x_train, y_train = data["train"]
    classes = np.unique(y_train)
    best_model, best_setting, best_loss = None, grid[0], np.inf
    for setting in grid:
        model = make(**setting).fit(x_train, y_train)
        loss = float(log_loss(data["val"][1], model.predict_proba(data["val"][0]), labels=classes))
        if loss < best_loss:
            best_model, best_setting, best_loss = model, setting, loss
    predicted = best_model.predict(data["test"][0])
    test = accuracy_with_interval(predicted == data["test"][1])
    return {
        "val_log_loss": round(best_loss, 6),
        "val_accuracy": round(
            float(np.mean(best_model.predict(data["val"][0]) == data["val"][1])), 6
        ),
        "test_accuracy": test["accuracy"],
        "test_accuracy_low": test["accuracy_low"],
        "test_accuracy_high": test["accuracy_high"],
        **{key: round(value, 8) for key, value in best_setting.items()},
    }, predicted


def svm_grid(x_train: np.ndarray) -> list[dict[str, float]]:
    scale = 1.0 / (x_train.shape[1] * float(x_train.var()))
    return [
        {"C": C, "gamma": factor * scale} for C, factor in itertools.product(SVM_C, SVM_GAMMA_SCALE)
    ]


def main() -> None:
    baselines = load_params("baselines")["baselines"]
    start = time.perf_counter()
    size = baselines["pixel_size"]
    augmented = baselines["train_on"] == "augmented"
    pixels = pixel_data(size, augmented)
    features = feature_data(augmented)
    c_grid = [{"C": C} for C in LOGREG_C]
    runs = {
        "logreg_pixels": (logreg, c_grid, pixels),
        "svm_rbf_pixels": (svm_rbf, svm_grid(pixels["train"][0]), pixels),
        "logreg_features": (logreg, c_grid, features),
    }
    results: dict = {}
    for name, (make, grid, data) in runs.items():
        results[name], predicted = select_on_val(make, grid, data)
        save_npy(paths.baseline_predicted(name), predicted.astype(np.int32))
    results.update(
        train_on=baselines["train_on"],
        train_images=len(features["train"][1]),
        pixel_size=size,
        feature_dim=int(features["train"][0].shape[1]),
    )
    write_json(paths.BASELINES, results)
    scores = ", ".join(
        f"{name} {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f})"
        for name, r in results.items()
        if isinstance(r, dict)
    )
    print(
        f"baselines: test accuracy {scores}; wrote {paths.BASELINES} in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
