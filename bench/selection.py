"""Selection records for the defaults: each one chosen by the project's one rule, on val only.

    python -m bench.selection [--keys train.dropout ...] [--seeds 42 7 123] [--head-seeds 42 1]
        [--data mnist digits]

The rule (docs/model-selection.md): the fewest **val errors** summed over split seeds x head
seeds (and over data sets, with more than one ``--data``), and among equals the lowest mean
**val log-loss** (plain, unsmoothed cross-entropy of the val images, ``metrics.json``
``val.log_loss``). Errors first because the log-loss of settings
with different label smoothing is not comparable (smoothing caps every confidence). Test is not
read: the record holds val figures only, so that nothing here can be tuned on the test set.

One key at a time, from the current params.yaml (coordinate-wise): for each key in
``CANDIDATES`` every value is run with ``dvc exp run evaluate -S key=value -S split.seed=S
-S train.seed=H`` in a scratch copy of the project (``bench/common.py``: params.yaml put back
before every run; ImageNet weights). Writes ``bench/selection.json``: per key, every value's
val figures, the value chosen, and whether it is params.yaml's value.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import DATA, IMAGENET, ROOT, exp_run, metrics, record_text, scratch
from stages.common import paths

OUT = ROOT / "bench" / "selection.json"
# The values tried for each default. Keys that change extract or augment cost a feature
# extraction per split seed (about a minute each on 2 cores); head keys about 20 s a run.
CANDIDATES: dict[str, list[Any]] = {
    "train.label_smoothing": [0.0, 0.1],
    "train.lr_schedule": ["constant", "cosine"],
    "train.min_delta": [0.0, 0.0001, 0.001],
    "train.dropout": [0.0, 0.25, 0.5],
    "train.layers": [[], [256], [512], [1024]],
    # Batch size and learning rate move together (the rate scaled with the batch).
    "train.batch_size+learning_rate": [[256, 0.001], [1024, 0.002], [1024, 0.004]],
    # The two that won one at a time (bench/selection.json, MNIST), tried together.
    "train.learning_rate+min_delta": [
        [0.002, 0.0001],
        [0.004, 0.0001],
        [0.002, 0.001],
        [0.004, 0.001],
    ],
    "augment.copies": [0, 4, 8],
    "extract.pooling": ["avg", "max"],
}


def assignments(key: str, value: Any) -> list[tuple[str, Any]]:
    """``key=value`` pairs for one candidate; a joint key ``s.a+b`` takes a list ``[a, b]``."""
    section, names = key.split(".")
    if "+" not in names:
        return [(key, value)]
    return [(f"{section}.{name}", v) for name, v in zip(names.split("+"), value, strict=True)]


def current(key: str) -> Any:
    section, names = key.split(".")
    params = yaml.safe_load((ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))[section]
    values = [params[name] for name in names.split("+")]
    return values if "+" in names else values[0]


def as_cli(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it (YAML): lists without spaces."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)


def exp_sets(key: str, value: Any, seed: int, head_seed: int, data: str = "mnist") -> list[str]:
    """The ``-S`` settings of one run: ``key`` at ``value``, the split and head seeds, ImageNet
    weights, the data set's settings (``DATA``); every other param is params.yaml's
    (``exp_run`` puts it back before each run)."""
    settings = dict(assignments(key, value))
    settings |= {"split.seed": seed, "train.seed": head_seed}
    return [f"{k}={as_cli(v)}" for k, v in settings.items()] + [IMAGENET, *DATA[data]]


def select(repo: Path, key: str, seeds: list[int], head_seeds: list[int], data: list[str]) -> dict:
    """Every candidate of ``key`` over all data sets and seeds; the fewest val errors, then the
    lowest mean val log-loss."""
    tried: dict[str, dict] = {}
    for value in CANDIDATES[key]:
        runs = []
        for name, seed, head_seed in itertools.product(data, seeds, head_seeds):
            exp_run(repo, exp_sets(key, value, seed, head_seed, name))
            val = metrics(repo)["val"]
            scores = {"val_errors": val["n"] - val["right"], "val_log_loss": val["log_loss"]}
            scores["val_accuracy"] = val["accuracy"]
            runs.append({"data": name, "seed": seed, "head_seed": head_seed, **scores})
            print(f"{key}={as_cli(value)} {name} seed {seed}/{head_seed}: {runs[-1]}", flush=True)
        tried[as_cli(value)] = {
            "val_errors": int(sum(r["val_errors"] for r in runs)),
            "mean_val_log_loss": round(float(np.mean([r["val_log_loss"] for r in runs])), 6),
            "mean_val_accuracy": round(float(np.mean([r["val_accuracy"] for r in runs])), 6),
            "runs": runs,
        }
    chosen = min(tried, key=lambda v: (tried[v]["val_errors"], tried[v]["mean_val_log_loss"]))
    return {
        "rule": "fewest val errors, then lowest mean val log-loss",
        "tried": tried,
        "chosen": chosen,
        "params_yaml": as_cli(current(key)),
        "params_yaml_is_chosen": chosen == as_cli(current(key)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--data", nargs="+", default=["mnist"], choices=list(DATA))
    args = parser.parse_args(argv)
    # One record for every key (each run adds or replaces its keys); no command or machine in it.
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    with scratch("selection") as repo:
        for key in args.keys:
            record[key] = {"data": args.data, "seeds": args.seeds, "head_seeds": args.head_seeds}
            record[key] |= select(repo, key, args.seeds, args.head_seeds, args.data)
            OUT.write_text(record_text(record) + "\n", encoding="utf-8")
            print(
                f"{key}: chosen {record[key]['chosen']} (params.yaml {record[key]['params_yaml']})"
            )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
