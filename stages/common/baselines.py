"""What both baselines stages share: selection on val and the logistic regression.

Each baseline's hyper-parameters are chosen on val only (a small grid; ties go to the first,
most regularised, setting); it is fitted on the training images (not the augmented copies) and
scored once on test. No TensorFlow is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def report(stage: str, results: dict[str, Any], path: Path, seconds: float) -> None:
    """One line: each baseline's test (and val) accuracy, where they went, how long it took."""
    scores = ", ".join(
        f"{name} {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f})"
        for name, r in results.items()
        if isinstance(r, dict)
    )
    print(f"{stage}: test accuracy {scores}; wrote {path} in {seconds:.1f}s")
