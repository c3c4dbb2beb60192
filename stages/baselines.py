"""Stage baselines: plain scikit-learn classifiers on the same split, to show what the head beats.

Three baselines, each with its hyper-parameters chosen on val only (a small grid; ties go to
the first, most regularised, setting), fitted on the training images (not the augmented
copies) and scored once on test:

* ``logreg_pixels``: logistic regression on raw pixels;
* ``svm_rbf_pixels``: an RBF support vector machine on raw pixels;
* ``logreg_features``: logistic regression on the cached ResNet50 features, standardised.

Raw pixels: each split image (``data.image_size`` RGB) is converted to grayscale and
area-averaged down to ``baselines.pixel_size`` square (8: scikit-learn's digits at their own
resolution), scaled to [0, 1]. No TensorFlow is imported here.

Output: ``metrics/baselines.json`` (val and test accuracy and the chosen setting per baseline).
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
from stages.common.io import load_npy, write_json
from stages.common.params import load_params

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (
    *(p for s in SPLITS for p in (paths.split_images(s), paths.split_labels(s))),
    paths.FEATURES_DIR,
)
WRITES = (paths.BASELINES,)
LOGREG_C = (0.001, 0.01, 0.1, 1.0, 10.0)
SVM_C = (1.0, 3.0, 10.0, 30.0, 100.0)
SVM_GAMMA_SCALE = (0.25, 0.5, 1.0, 2.0)  # times scikit-learn's gamma="scale", 1 / (d * var(X))

Data = dict[str, tuple[np.ndarray, np.ndarray]]


def to_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """(n, s, s, 3) uint8 -> (n, size * size) float32 in [0, 1]: grayscale, area-averaged."""
    rows = [
        np.asarray(Image.fromarray(image).convert("L").resize((size, size), Image.Resampling.BOX))
        for image in images
    ]
    return (np.stack(rows).reshape(len(images), -1) / 255.0).astype(np.float32)


def pixel_data(size: int) -> Data:
    return {
        split: (
            to_pixels(load_npy(paths.split_images(split), mmap=True), size),
            load_npy(paths.split_labels(split)),
        )
        for split in SPLITS
    }


def feature_data() -> Data:
    """The cached features; train keeps only the original training images (the first rows)."""
    n_train = len(load_npy(paths.split_labels("train")))
    data = {}
    for split in SPLITS:
        features = load_npy(paths.features(split), mmap=True)
        labels = load_npy(paths.feature_labels(split))
        rows = n_train if split == "train" else len(labels)
        data[split] = (np.asarray(features[:rows], dtype=np.float32), labels[:rows])
    return data


def logreg(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))


def svm_rbf(C: float, gamma: float):
    from sklearn.svm import SVC

    return SVC(C=C, gamma=gamma, kernel="rbf")


def select_on_val(
    make: Callable[..., Any], grid: list[dict[str, float]], data: Data
) -> dict[str, Any]:
    """Fit every setting on train, keep the best on val (first on ties), score it on test."""
    x_train, y_train = data["train"]
    best_model, best_setting, best_val = None, grid[0], -1.0
    for setting in grid:
        model = make(**setting).fit(x_train, y_train)
        val = float(model.score(*data["val"]))
        if val > best_val:
            best_model, best_setting, best_val = model, setting, val
    return {
        "val_accuracy": round(best_val, 6),
        "test_accuracy": round(float(best_model.score(*data["test"])), 6),
        **{key: round(value, 8) for key, value in best_setting.items()},
    }


def svm_grid(x_train: np.ndarray) -> list[dict[str, float]]:
    scale = 1.0 / (x_train.shape[1] * float(x_train.var()))
    return [
        {"C": C, "gamma": factor * scale} for C, factor in itertools.product(SVM_C, SVM_GAMMA_SCALE)
    ]


def main() -> None:
    baselines = load_params("baselines")["baselines"]
    start = time.perf_counter()
    size = baselines["pixel_size"]
    pixels = pixel_data(size)
    features = feature_data()
    c_grid = [{"C": C} for C in LOGREG_C]
    results = {
        "logreg_pixels": select_on_val(logreg, c_grid, pixels),
        "svm_rbf_pixels": select_on_val(svm_rbf, svm_grid(pixels["train"][0]), pixels),
        "logreg_features": select_on_val(logreg, c_grid, features),
        "pixel_size": size,
        "feature_dim": int(features["train"][0].shape[1]),
    }
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
