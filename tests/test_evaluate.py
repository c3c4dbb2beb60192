"""The evaluate stage on hand-made inputs: it scores train's probabilities, never imports
TensorFlow, and reports intervals, calibration and small-support classes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run

from stages.common import paths
from stages.common.prep import ImagePrep
from stages.common.stats import wilson_interval

CLASSES = ["a", "b", "c"]
COUNTS = {"train": 30, "val": 12, "test": 24}
# Test: class "c" has only 4 images (small support); 2 of the 24 are misclassified.
TEST_LABELS = np.array([0] * 10 + [1] * 10 + [2] * 4, dtype=np.int32)


def probabilities(labels: np.ndarray, wrong: list[int], confidence: float = 0.9) -> np.ndarray:
    """Rows putting ``confidence`` on the true class, or on the next class for rows in ``wrong``."""
    probs = np.full((len(labels), 3), (1 - confidence) / 2, dtype=np.float32)
    predicted = labels.copy()
    predicted[wrong] = (labels[wrong] + 1) % 3
    probs[np.arange(len(labels)), predicted] = confidence
    return probs


def write_inputs(root: Path) -> None:
    """What split, extract and train leave for evaluate, small and by hand."""
    rng = np.random.default_rng(0)
    labels = {
        "train": np.arange(COUNTS["train"], dtype=np.int32) % 3,
        "val": np.arange(COUNTS["val"], dtype=np.int32) % 3,
        "test": TEST_LABELS,
    }
    wrong = {"train": [], "val": [1], "test": [3, 21]}
    (root / paths.SPLIT_DIR).mkdir(parents=True)
    (root / paths.FEATURES_DIR).mkdir(parents=True)
    (root / paths.PROBS_DIR).mkdir(parents=True)
    rows = [["split", "row", "class", "source"]]
    for split in paths.SPLITS:
        n = len(labels[split])
        np.save(root / paths.split_labels(split), labels[split])
        np.save(root / paths.split_images(split), rng.integers(0, 256, (n, 32, 32, 3), np.uint8))
        np.save(root / paths.probs(split), probabilities(labels[split], wrong[split]))
        rows += [[split, i, CLASSES[y], f"{split}/{i}.png"] for i, y in enumerate(labels[split])]
    with open(root / paths.MANIFEST, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    (root / paths.CLASSES).write_text(json.dumps(CLASSES))
    report = {"images": COUNTS, "skipped": {"empty_file": 0}, "notes": {"no_ink_found": 0}}
    (root / paths.SPLIT_REPORT).write_text(json.dumps(report))
    (root / paths.PREP).write_text(json.dumps(ImagePrep(image_size=32).as_dict()))
    n_test = len(labels["test"])
    np.save(root / paths.TEST_ORIGINALS, rng.integers(0, 256, (n_test, 16, 16, 3), np.uint8))
    info = {
        "weights": {"spec": "random", "source": "seeded", "sha256": "0" * 64},
        "layer": "conv4_block3_out",
        "pooling": "avg",
        "image_size": 32,
        "images": {"train": COUNTS["train"] * 2, "val": COUNTS["val"], "test": COUNTS["test"]},
    }
    (root / paths.FEATURES_INFO).write_text(json.dumps(info))
    shutil.copy(REPO_ROOT / paths.PARAMS_FILE, root / paths.PARAMS_FILE)
    # A baseline wrong on test rows 0, 1, 2 and right where the head is wrong (3 and 21).
    baseline = TEST_LABELS.copy()
    baseline[[0, 1, 2]] = 2
    (root / paths.BASELINES_DIR).mkdir(parents=True)
    np.save(root / paths.baseline_predicted("logreg_features"), baseline)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("evaluate")
    write_inputs(root)
    # Run the stage as DVC does, then say which heavy modules it imported.
    code = (
        "import runpy, sys; runpy.run_module('stages.evaluate', run_name='__main__'); "
        "print('IMPORTED', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = run(["python", "-c", code], root, env={"PYTHONPATH": str(REPO_ROOT)}, timeout=300)
    return root, result.stdout


def read(root: Path, path: Path) -> dict:
    return json.loads((root / path).read_text(encoding="utf-8"))


def test_evaluate_never_imports_tensorflow(evaluated) -> None:
    _, out = evaluated
    assert "IMPORTED []" in out


def test_accuracy_has_its_wilson_interval(evaluated) -> None:
    root, _ = evaluated
    metrics = read(root, paths.METRICS)
    test = metrics["test"]
    assert (test["right"], test["n"]) == (22, 24)
    low, high = wilson_interval(22, 24)
    assert test["accuracy"] == pytest.approx(22 / 24, abs=1e-6)
    assert (test["accuracy_low"], test["accuracy_high"]) == pytest.approx((low, high), abs=1e-6)
    assert metrics["val"]["right"] == 11 and metrics["train"]["n"] == COUNTS["train"]
    # Plain log-loss: every row puts 0.9 on its predicted class, 0.05 elsewhere.
    expected = -(22 * np.log(0.9) + 2 * np.log(0.05)) / 24
    assert test["log_loss"] == pytest.approx(expected, rel=1e-5)
    assert "loss" not in test, "one name per quantity: log_loss"
    assert metrics["images"]["train_augmented"] == COUNTS["train"]


def test_calibration_error_and_figure(evaluated) -> None:
    root, _ = evaluated
    test = read(root, paths.METRICS)["test"]
    # Every test image has confidence 0.9, so all sit in the (0.8, 0.9] bin: accuracy 22/24
    # against confidence 0.9.
    assert test["ece"] == pytest.approx(abs(22 / 24 - 0.9), abs=1e-5)
    assert (root / paths.CALIBRATION).stat().st_size > 10_000


def test_small_support_classes_are_flagged(evaluated) -> None:
    root, _ = evaluated
    with open(root / paths.PER_CLASS, encoding="utf-8", newline="") as f:
        per_class = {row["class"]: row for row in csv.DictReader(f)}
    assert per_class["c"]["support"] == "4" and per_class["c"]["small_support"] == "True"
    assert per_class["a"]["small_support"] == "False"
    assert read(root, paths.METRICS)["test"]["small_support_classes"] == 1
    # Class "c" got 3 of 4 right (row 21 wrong): recall 0.75 with a wide interval.
    assert float(per_class["c"]["recall"]) == pytest.approx(0.75)
    low, high = wilson_interval(3, 4)
    interval = (float(per_class["c"]["recall_low"]), float(per_class["c"]["recall_high"]))
    assert interval == pytest.approx((low, high), abs=1e-6)


def test_paired_mcnemar_against_each_baseline(evaluated) -> None:
    root, _ = evaluated
    paired = read(root, paths.METRICS)["paired"]
    assert list(paired) == ["logreg_features"]
    test = paired["logreg_features"]
    assert (test["head_only_right"], test["baseline_only_right"]) == (3, 2)
    # 3 vs 2 discordant pairs: exact p = 2 * P(X <= 2 | n=5) = 1, mid-p = 1 - P(X = 2) = 22/32.
    assert test["p_exact"] == 1.0
    assert test["p_mid"] == pytest.approx(22 / 32, abs=1e-6)


def test_probabilities_from_another_run_are_refused(tmp_path: Path) -> None:
    write_inputs(tmp_path)
    np.save(tmp_path / paths.probs("val"), probabilities(np.zeros(5, np.int32), []))
    result = run(
        ["python", "-m", "stages.evaluate"],
        tmp_path,
        check=False,
        env={"PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "has 5 rows but data/split/val_labels.npy has 12 labels" in result.stderr
    assert "Traceback" not in result.stderr
