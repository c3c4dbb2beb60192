"""Val and test errors of the head, and of logistic regression, on each cached feature set.

    python -m bench.feature_sweep.compare_heads SETS HEADS SEEDS HEAD_SEEDS ROOT

SETS: a JSON list of feature names written by ``extract_features`` ("a+b" concatenates two);
HEADS: a JSON list of overrides of params.yaml's ``train`` section ({} for none); SEEDS: the split
seeds (features in ROOT/feat_<seed>); HEAD_SEEDS: ``train.seed`` values. Prints one JSON line
per fit. Logistic regression picks C on val accuracy as the baselines_features stage does; the head is
stages.train's own ``build_head`` + ``fit_head``. The choice of defaults reads val columns
only; test errors are printed to report, not to choose.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.baselines import logreg, logreg_grid, select_on_val
from stages.common.params import load_params
from stages.common.tf import setup_keras
from stages.train import build_head, fit_head

ROOT = Path(__file__).resolve().parents[2]


def load(folder: Path, features: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.load(folder / f"{f}_{split}.npy") for f in features.split("+")], axis=1)
    return x, np.load(folder / f"labels_{split}.npy")


def best_logreg(data: dict, n_orig: int) -> dict:
    """The baselines_features stage's own val-only choice of C, fitted on the original training images."""
    data = {**data, "train": tuple(a[:n_orig] for a in data["train"])}
    result, _ = select_on_val(logreg, logreg_grid(), data)
    n_test = len(data["test"][1])
    return {
        "C": result["C"],
        "val_acc": round(result["val_accuracy"], 4),
        "test_err": round((1 - result["test_accuracy"]) * n_test),
    }


def head_row(keras, data: dict, params: dict, log: Path) -> dict:
    (x, y), (xv, yv), (xt, yt) = data["train"], data["val"], data["test"]
    keras.utils.set_random_seed(params["seed"])
    model = build_head(keras, x, int(y.max()) + 1, params)
    start = time.perf_counter()
    ran, _ = fit_head(keras, model, (x, y), (xv, yv), params, log)
    seconds = time.perf_counter() - start
    pv, pt = model.predict(xv, verbose=0), model.predict(xt, verbose=0)
    return {
        "ran": ran,
        "s": round(seconds, 1),
        "val_acc": round(float((pv.argmax(1) == yv).mean()), 4),
        "val_nll": round(float(-np.log(pv[np.arange(len(yv)), yv]).mean()), 4),
        "test_err": int((pt.argmax(1) != yt).sum()),
    }


def main() -> None:
    sets, heads, seeds, head_seeds = (json.loads(a) for a in sys.argv[1:5])
    root = Path(sys.argv[5])
    head_defaults = load_params("train", path=ROOT / paths.PARAMS_FILE)["train"]
    keras = setup_keras(42)
    for seed in seeds:
        folder = root / f"feat_{seed}"
        n_orig = int(np.load(folder / "n_orig.npy"))
        for features in sets:
            data = {s: load(folder, features, s) for s in ("train", "val", "test")}
            row = {"seed": seed, "fs": features, "model": "logreg"}
            print(json.dumps({**row, **best_logreg(data, n_orig)}), flush=True)
            for head in heads:
                for head_seed in head_seeds:
                    params = {**head_defaults, **head, "seed": head_seed}
                    row = {"seed": seed, "fs": features, "model": head, "hs": head_seed}
                    result = head_row(keras, data, params, root / "log.csv")
                    print(json.dumps({**row, **result}), flush=True)


if __name__ == "__main__":
    main()
