"""Stage baselines_pixels: scikit-learn classifiers on raw pixels, to show what the head beats.

Two baselines on the split's images, each chosen on val by the project's rule (fewest val
errors, then val log-loss) and scored once on test (``stages.common.baselines.select_on_val``):

* ``logreg_pixels``: logistic regression;
* ``svm_rbf_pixels``: an RBF support vector machine, probabilities by Platt scaling.

``baselines.train_on: augmented`` adds augment's copies of the training images to train.

Raw pixels: each split image (``data.image_size`` RGB) is converted to grayscale and
area-averaged down to ``baselines.pixel_size`` square (8: scikit-learn's digits at their own
resolution), scaled to [0, 1]. Reads the split only, so extract's params do not re-run it.

Outputs: ``metrics/baselines_pixels.json`` (val log-loss and accuracy, test accuracy with its
Wilson interval, the chosen setting) and ``data/baselines/<name>_test_predicted.npy``.
"""

from __future__ import annotations

import functools
import itertools
import time

import numpy as np
from PIL import Image

from stages.common import paths
from stages.common.baselines import Data, logreg, logreg_grid, report, select_and_save
from stages.common.errors import run_stage
from stages.common.io import load_npy, write_json
from stages.common.params import load_params

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (
    *(p for s in paths.SPLITS for p in (paths.split_images(s), paths.split_labels(s))),
    paths.AUGMENTED_DIR,
)
NAMES = ("logreg_pixels", "svm_rbf_pixels")
WRITES = (paths.BASELINES_PIXELS, *(paths.baseline_predicted(name) for name in NAMES))
SVM_C = (1.0, 10.0, 100.0)
SVM_GAMMA_SCALE = (0.5, 1.0, 2.0)  # times scikit-learn's gamma="scale", 1 / (d * var(X))
PLATT_FOLDS = 5


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
        for split in paths.SPLITS
    }
    if augmented:
        copies = to_pixels(load_npy(paths.AUGMENTED_IMAGES, mmap=True), size)
        x, y = data["train"]
        data["train"] = (
            np.concatenate([x, copies]),
            np.concatenate([y, load_npy(paths.AUGMENTED_LABELS)]),
        )
    return data


def platt_folds(y_train: np.ndarray) -> int:
    """Folds for the SVM's Platt scaling: 5, or fewer when a class has fewer training images."""
    return int(min(PLATT_FOLDS, np.bincount(y_train)[np.unique(y_train)].min()))


class PlattOnTrain:
    """An SVM fitted on all training images, then Platt-scaled on those same images.

    For a class with a single training image, which leaves no fold to hold out: the
    probabilities are optimistic, the predictions are the SVM's own.
    """

    def __init__(self, svm) -> None:
        self.svm = svm

    def fit(self, x: np.ndarray, y: np.ndarray) -> PlattOnTrain:
        import warnings

        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class": expected
            self.model = CalibratedClassifierCV(FrozenEstimator(self.svm.fit(x, y))).fit(x, y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)


def svm_rbf(C: float, gamma: float, folds: int = PLATT_FOLDS):
    """An RBF SVM with Platt-scaled probabilities (``folds``-fold, unshuffled: deterministic),
    the form scikit-learn 1.9 recommends over the deprecated ``SVC(probability=True)``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    svm = SVC(C=C, gamma=gamma, kernel="rbf")
    if folds < 2:
        return PlattOnTrain(svm)
    return CalibratedClassifierCV(svm, cv=folds, ensemble=False)


def svm_grid(x_train: np.ndarray) -> list[dict[str, float]]:
    scale = 1.0 / (x_train.shape[1] * float(x_train.var()))
    return [
        {"C": C, "gamma": factor * scale} for C, factor in itertools.product(SVM_C, SVM_GAMMA_SCALE)
    ]


def main() -> None:
    baselines = load_params("baselines")["baselines"]
    start = time.perf_counter()
    size = baselines["pixel_size"]
    pixels = pixel_data(size, baselines["train_on"] == "augmented")
    results = {
        "logreg_pixels": select_and_save("logreg_pixels", logreg, logreg_grid(), pixels),
        "svm_rbf_pixels": select_and_save(
            "svm_rbf_pixels",
            functools.partial(svm_rbf, folds=platt_folds(pixels["train"][1])),
            svm_grid(pixels["train"][0]),
            pixels,
        ),
        "train_images": len(pixels["train"][1]),
        "pixel_size": size,
    }
    write_json(paths.BASELINES_PIXELS, results)
    report("baselines_pixels", results, paths.BASELINES_PIXELS, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
