"""Stage baselines_features: logistic regression on the cached ResNet50 features.

What a linear model makes of the same features the head is trained on: ``logreg_features``,
standardised, C chosen on val (fewest val errors, then val log-loss) and scored once on test
(``stages.common.baselines``), fitted on the features of the original training images only (the
first rows), or with ``baselines.train_on: augmented`` on every row, the augmented copies too,
as the head is.

Outputs: ``metrics/baselines_features.json`` (val log-loss and accuracy, test accuracy with its
Wilson interval, chosen C, feature size) and ``data/baselines/logreg_features_test_predicted.npy``.
"""

from __future__ import annotations

import time

import numpy as np

from stages.common import paths
from stages.common.baselines import Data, logreg, logreg_grid, report, select_and_save
from stages.common.errors import run_stage
from stages.common.io import load_npy, write_json
from stages.common.params import load_params

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.split_labels("train"), paths.FEATURES_DIR)
WRITES = (paths.BASELINES_FEATURES, paths.baseline_predicted("logreg_features"))


def feature_data(augmented: bool) -> Data:
    """The cached features; train keeps only the original training images (the first rows)
    unless ``augmented``, when it keeps every row, copies included, as the head trains on."""
    n_train = len(load_npy(paths.split_labels("train")))
    data = {}
    for split in paths.SPLITS:
        features = load_npy(paths.features(split), mmap=True)
        labels = load_npy(paths.feature_labels(split))
        rows = n_train if split == "train" and not augmented else len(labels)
        data[split] = (np.asarray(features[:rows], dtype=np.float32), labels[:rows])
    return data


def main() -> None:
    baselines = load_params("baselines")["baselines"]
    start = time.perf_counter()
    features = feature_data(baselines["train_on"] == "augmented")
    results = {
        "logreg_features": select_and_save("logreg_features", logreg, logreg_grid(), features),
        "train_images": len(features["train"][1]),
        "feature_dim": int(features["train"][0].shape[1]),
    }
    write_json(paths.BASELINES_FEATURES, results)
    report("baselines_features", results, paths.BASELINES_FEATURES, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
