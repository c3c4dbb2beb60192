"""Stage baselines_features: logistic regression on the cached ResNet50 features.

What a linear model makes of the same features the head is trained on: ``logreg_features``,
standardised, C chosen on val and scored once on test (``stages.common.baselines``), fitted on
the features of the original training images only (the first rows; not the augmented copies).

Output: ``metrics/baselines_features.json`` (val and test accuracy, chosen C, feature size).
"""

from __future__ import annotations

import time

import numpy as np

from stages.common import paths
from stages.common.baselines import Data, logreg, logreg_grid, report, select_on_val
from stages.common.errors import run_stage
from stages.common.io import load_npy, write_json
from stages.common.params import load_params

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.split_labels("train"), paths.FEATURES_DIR)
WRITES = (paths.BASELINES_FEATURES,)


def feature_data() -> Data:
    """The cached features; train keeps only the original training images (the first rows)."""
    n_train = len(load_npy(paths.split_labels("train")))
    data = {}
    for split in paths.SPLITS:
        features = load_npy(paths.features(split), mmap=True)
        labels = load_npy(paths.feature_labels(split))
        rows = n_train if split == "train" else len(labels)
        data[split] = (np.asarray(features[:rows], dtype=np.float32), labels[:rows])
    return data


def main() -> None:
    load_params()  # no section of its own, but a typo anywhere in params.yaml stops every stage
    start = time.perf_counter()
    features = feature_data()
    results = {
        "logreg_features": select_on_val(logreg, logreg_grid(), features),
        "feature_dim": int(features["train"][0].shape[1]),
    }
    write_json(paths.BASELINES_FEATURES, results)
    report("baselines_features", results, paths.BASELINES_FEATURES, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
