"""What both baselines stages share: selection on val and the logistic regression.

Each baseline's hyper-parameters are chosen on val only, by the rule the head's defaults were
chosen by (docs/model-selection.md): the fewest val errors, then the lowest val log-loss (a small
grid; full ties go to the first, most regularised, setting). It
is fitted on the training images, with augment's copies too when ``baselines.train_on:
augmented`` (the head's own training set, so that head and baselines compare on equal terms),
and scored once on test; each test image's predicted class goes to
``data/baselines/<name>_test_predicted.npy``, from which evaluate runs the paired McNemar test
of the head against the baseline. No TensorFlow is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import paths
from stages.common.io import save_npy
from stages.common.stats import accuracy_with_interval

LOGREG_C = (0.001, 0.01, 0.1, 1.0, 10.0)

Data = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (x, labels)


def logreg(C: float):
    """Logistic regression on standardised inputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))


def logreg_grid() -> list[dict[str, float]]:
    return [{"C": C} for C in LOGREG_C]


def select_on_val(
    make: Callable[..., Any], grid: list[dict[str, float]], data: Data
) -> dict[str, Any]:
    """Fit every setting on train; keep the fewest val errors, then the lowest val log-loss
    (the first on full ties); score it on test.

    Returns the record for metrics/baselines.json and the test images' predicted classes.
    """
    from sklearn.metrics import log_loss

    x_train, y_train = data["train"]
    x_val, y_val = data["val"]
    classes = np.unique(y_train)
    best_model, best_setting, best_key = None, grid[0], (np.inf, np.inf)
    for setting in grid:
        model = make(**setting).fit(x_train, y_train)
        # Errors of predict (what test scores), which for Platt-scaled SVMs can differ from
        # the argmax of predict_proba.
        errors = int(np.sum(model.predict(x_val) != y_val))
        key = (errors, float(log_loss(y_val, model.predict_proba(x_val), labels=classes)))
        if key < best_key:
            best_model, best_setting, best_key = model, setting, key
    predicted = best_model.predict(data["test"][0])
    test = accuracy_with_interval(predicted == data["test"][1])
    return {
        "val_log_loss": round(best_key[1], 6),
        "val_accuracy": round(1 - best_key[0] / len(y_val), 6),
        "test_accuracy": test["accuracy"],
        "test_accuracy_low": test["accuracy_low"],
        "test_accuracy_high": test["accuracy_high"],
        **{key: round(value, 8) for key, value in best_setting.items()},
    }, predicted


def select_and_save(name: str, make: Callable[..., Any], grid: list[dict], data: Data) -> dict:
    """``select_on_val``, with the test predictions saved for evaluate's paired test."""
    result, predicted = select_on_val(make, grid, data)
    save_npy(paths.baseline_predicted(name), predicted.astype(np.int32))
    return result


def report(stage: str, results: dict[str, Any], path: Path, seconds: float) -> None:
    """One line: each baseline's test (and val) accuracy, where they went, how long it took."""
    scores = ", ".join(
        f"{name} {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f})"
        for name, r in results.items()
        if isinstance(r, dict)
    )
    print(f"{stage}: test accuracy {scores}; wrote {path} in {seconds:.1f}s")
