"""The baselines stages on tiny synthetic data: pixels, selection on val, no TensorFlow."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, run

from stages.baselines_pixels import to_pixels
from stages.common import paths
from stages.common.baselines import select_on_val
from stages.common.stats import wilson_interval


def test_to_pixels_area_averages_back_to_the_original_grid() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)  # each pixel becomes an 8x8 block
    rgb = np.repeat(big[..., None], 3, axis=3)
    pixels = to_pixels(rgb, 8)
    assert pixels.shape == (2, 64)
    assert np.allclose(pixels, small.reshape(2, 64) / 255.0, atol=1e-6)


class Threshold:
    """A one-parameter classifier: label 1 (with probability 0.9) when the first feature exceeds
    ``at``."""

    def __init__(self, at: float) -> None:
        self.at = at

    def fit(self, x: np.ndarray, y: np.ndarray) -> Threshold:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x[:, 0] > self.at).astype(int)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        one = np.where(self.predict(x) == 1, 0.9, 0.1)
        return np.stack([1 - one, one], axis=1)


def test_select_on_val_picks_on_val_and_scores_test_once() -> None:
    x = np.arange(10, dtype=float)[:, None]
    data = {
        "train": (x, (x[:, 0] > 2).astype(int)),
        "val": (x, (x[:, 0] > 5).astype(int)),  # val prefers at=5 ...
        "test": (x, (x[:, 0] > 7).astype(int)),  # ... whatever test would have preferred
    }
    result, predicted = select_on_val(Threshold, [{"at": 2.0}, {"at": 5.0}, {"at": 7.0}], data)
    assert result["at"] == 5.0
    assert result["val_log_loss"] == pytest.approx(-np.log(0.9), abs=1e-6)
    assert result["val_accuracy"] == 1.0 and result["test_accuracy"] == 0.8
    low, high = wilson_interval(8, 10)
    assert (result["test_accuracy_low"], result["test_accuracy_high"]) == pytest.approx(
        (low, high), abs=1e-6
    )
    assert predicted.tolist() == (x[:, 0] > 5).astype(int).tolist()


class SureThreshold(Threshold):
    """A threshold with a set confidence: its log-loss says how sure it is, not how often right."""

    def __init__(self, at: float, sure: float) -> None:
        super().__init__(at)
        self.sure = sure

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        one = np.where(self.predict(x) == 1, self.sure, 1 - self.sure)
        return np.stack([1 - one, one], axis=1)


def test_select_on_val_puts_val_errors_before_log_loss() -> None:
    x = np.arange(10, dtype=float)[:, None]
    labels = (x[:, 0] > 5).astype(int)
    data = {"train": (x, labels), "val": (x, labels), "test": (x, labels)}
    # at=6 is wrong once but confident (val log-loss 0.55); at=5 is never wrong but unsure (0.60).
    grid = [{"at": 6.0, "sure": 0.6}, {"at": 5.0, "sure": 0.55}]
    result, _ = select_on_val(SureThreshold, grid, data)
    assert result["at"] == 5.0 and result["val_accuracy"] == 1.0
    assert result["val_log_loss"] == pytest.approx(-np.log(0.55), abs=1e-6)
    # With equal errors, the lower log-loss wins.
    result, _ = select_on_val(
        SureThreshold, [{"at": 5.0, "sure": 0.55}, {"at": 5.0, "sure": 0.9}], data
    )
    assert result["sure"] == 0.9


@pytest.mark.parametrize(("train_on", "train_images"), [("original", 40), ("augmented", 80)])
def test_stages_write_metrics_without_importing_tensorflow(
    tmp_path: Path, train_on: str, train_images: int
) -> None:
    rng = np.random.default_rng(1)
    split, features = tmp_path / paths.SPLIT_DIR, tmp_path / paths.FEATURES_DIR
    split.mkdir(parents=True)
    features.mkdir(parents=True)
    for name, n in (("train", 40), ("val", 20), ("test", 20)):
        labels = np.arange(n, dtype=np.int32) % 2
        images = np.full((n, 16, 16, 3), 255, dtype=np.uint8)
        images[labels == 1, :8] = 0  # class 1: top half inked
        images = np.clip(images + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
        np.save(tmp_path / paths.split_images(name), images)
        np.save(tmp_path / paths.split_labels(name), labels)
        extra = 2 if name == "train" else 1  # train features also hold augmented copies
        feats = rng.normal(size=(n * extra, 6)).astype(np.float32)
        feats[:, 0] += 10 * np.tile(labels, extra)
        np.save(tmp_path / paths.features(name), feats)
        np.save(tmp_path / paths.feature_labels(name), np.tile(labels, extra))
    # augment's copies of the 40 training images (here: the same images again).
    (tmp_path / paths.AUGMENTED_DIR).mkdir(parents=True)
    np.save(tmp_path / paths.AUGMENTED_IMAGES, np.load(tmp_path / paths.split_images("train")))
    np.save(tmp_path / paths.AUGMENTED_LABELS, np.load(tmp_path / paths.split_labels("train")))
    params = yaml.safe_load((REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))
    params["baselines"]["train_on"] = train_on
    (tmp_path / paths.PARAMS_FILE).write_text(yaml.safe_dump(params), encoding="utf-8")
    code = (
        "import sys; from stages import baselines_pixels, baselines_features; "
        "baselines_pixels.main(); baselines_features.main(); "
        "assert 'tensorflow' not in sys.modules, 'a baselines stage imported TensorFlow'"
    )
    result = run([sys.executable, "-c", code], tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})
    assert "baselines_pixels: test accuracy" in result.stdout
    assert "baselines_features: test accuracy" in result.stdout
    pixels = json.loads((tmp_path / paths.BASELINES_PIXELS).read_text())
    features = json.loads((tmp_path / paths.BASELINES_FEATURES).read_text())
    assert list(pixels) == [
        "logreg_pixels",
        "svm_rbf_pixels",
        "train_images",
        "pixel_size",
    ]
    assert list(features) == ["logreg_features", "train_images", "feature_dim"]
    for metrics in (pixels, features):  # numbers only: baselines.train_on is a param, not a metric
        assert metrics["train_images"] == train_images
    for metrics, name in [
        (pixels, "logreg_pixels"),
        (pixels, "svm_rbf_pixels"),
        (features, "logreg_features"),
    ]:
        assert metrics[name]["val_accuracy"] == metrics[name]["test_accuracy"] == 1.0
        predicted = np.load(tmp_path / paths.baseline_predicted(name), allow_pickle=False)
        assert predicted.tolist() == np.load(tmp_path / paths.split_labels("test")).tolist()
    assert pixels["pixel_size"] == params["baselines"]["pixel_size"]
    assert features["feature_dim"] == 6


@pytest.mark.parametrize("per_class", [1, 3])
def test_svm_handles_classes_with_fewer_training_images_than_folds(per_class: int) -> None:
    """A class with 1 (no fold to hold out) or 3 training images (fewer than 5 folds) still
    gets a Platt-scaled SVM: split accepts such classes, so the baseline must too."""
    from stages.baselines_pixels import platt_folds, svm_grid, svm_rbf

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [per_class, 6, 6]).astype(np.int32)
    x = rng.normal(size=(len(y), 4)) + 4 * y[:, None]
    assert platt_folds(y) == min(5, per_class)
    data = {"train": (x, y), "val": (x, y), "test": (x, y)}
    result, predicted = select_on_val(
        functools.partial(svm_rbf, folds=platt_folds(y)), svm_grid(x)[:2], data
    )
    assert predicted.shape == y.shape
    assert 0 <= result["test_accuracy"] <= 1
    assert np.isfinite(result["val_log_loss"])
