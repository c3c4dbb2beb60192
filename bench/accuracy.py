"""Accuracy over split seeds, and the selection of the defaults: ``dvc exp run``s and their metrics.

    python -m bench.accuracy [--data mnist digits] [--seeds 42 7 123] [--head-seeds 42 1]
    python -m bench.accuracy --select [KEY ...] [--data ...] [--seeds ...] [--head-seeds ...]

Both run ``dvc exp run evaluate -S split.seed=S -S train.seed=H ...`` (ImageNet weights) for
every data set, split seed and head seed in one scratch copy (``bench/common.py``: params.yaml
put back before every run) and only read what evaluate wrote.

The defaults' accuracy goes to ``bench/accuracy_<data>.json`` (``bench/accuracy.json`` for the
digits): every run's figures, the paired McNemar tests of the head against each baseline on the
same test images, and per row (the head, each baseline) the mean, sample std, min and max.

``--select`` picks each key named (all of ``CANDIDATES`` when none is) by the project's one rule
(docs/model-selection.md): the fewest **val errors** summed over data sets x split seeds x head
seeds, and among equals the lowest mean **val log-loss** (plain, unsmoothed cross-entropy of the
val images, ``metrics.json`` ``val.log_loss``). Errors first because the log-loss of settings with
different label smoothing is not comparable (smoothing caps every confidence). One key at a time,
the others at params.yaml's values (coordinate-wise). ``bench/selection.json`` keeps val figures
only, so that nothing here can be tuned on the test set: per key, every value's figures, the value
chosen and whether it is params.yaml's.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import DATA, IMAGENET, ROOT, exp_run, metrics, record_text, scratch, write_record
from stages.common import paths

SELECTION = ROOT / "bench" / "selection.json"
BASELINES = ("logreg_pixels", "svm_rbf_pixels", "logreg_features")
PAIRED = ("head_only_right", "baseline_only_right", "runs", "significant")  # summed over runs
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


def assignments(key: str, value: Any) -> dict[str, Any]:
    """``key=value`` settings of one candidate; a joint key ``s.a+b`` takes a list ``[a, b]``."""
    section, names = key.split(".")
    if "+" not in names:
        return {key: value}
    return {f"{section}.{name}": v for name, v in zip(names.split("+"), value, strict=True)}


def as_cli(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it (YAML): lists without spaces."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)


def exp_sets(settings: dict[str, Any], seed: int, head_seed: int, data: str = "mnist") -> list[str]:
    """The ``-S`` settings of one run: ``settings``, the split and head seeds, ImageNet weights,
    the data set's settings (``DATA``); every other param is params.yaml's (``exp_run`` puts it
    back before each run)."""
    settings = {**settings, "split.seed": seed, "train.seed": head_seed}
    return [f"{k}={as_cli(v)}" for k, v in settings.items()] + [IMAGENET, *DATA[data]]


def each_run(repo: Path, args: argparse.Namespace, data: list[str], settings: dict) -> list[dict]:
    """One ``dvc exp run evaluate`` per data set, split seed and head seed: the run's metrics."""
    found = []
    for name, seed, head_seed in itertools.product(data, args.seeds, args.head_seeds):
        done = exp_run(repo, exp_sets(settings, seed, head_seed, name))
        found.append({"data": name, "seed": seed, "head_seed": head_seed, **metrics(repo)})
        found[-1] |= metrics(repo, paths.BASELINES_PIXELS) | metrics(repo, paths.BASELINES_FEATURES)
        print(f"{done.command}: {done.seconds:.0f}s", flush=True)
    return found


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    figures = {"mean": a.mean(), "std": std, "min": a.min(), "max": a.max()}
    return {k: round(float(v), 6) for k, v in figures.items()}


def accuracy(repo: Path, args: argparse.Namespace, data: str) -> dict:
    """The defaults on one data set: per run, the head's and the baselines' figures; the rows;
    per baseline the McNemar discordant counts summed over runs and the runs with mid-p < 0.05."""
    runs = [
        {
            **{k: r[k] for k in ("seed", "head_seed")},
            **{f"{split}_accuracy": r[split]["accuracy"] for split in ("val", "test")},
            "test_errors": r["test"]["n"] - r["test"]["right"],
            "baselines": {name: r[name] for name in BASELINES},
            "paired": r.get("paired", {}),
        }
        for r in each_run(repo, args, [data], {})
    ]
    rows = {"defaults": {s: summary([r[f"{s}_accuracy"] for r in runs]) for s in ("val", "test")}}
    once = [r for r in runs if r["head_seed"] == args.head_seeds[0]]  # the same for every head
    for name in BASELINES:
        rows[f"baseline {name} (original images)"] = {
            s: summary([r["baselines"][name][f"{s}_accuracy"] for r in once])
            for s in ("val", "test")
        }
    paired: dict[str, dict] = {}
    for name, test in (item for r in runs for item in r["paired"].items()):
        row = paired.setdefault(name, dict.fromkeys(PAIRED, 0))
        row["head_only_right"] += test["head_only_right"]
        row["baseline_only_right"] += test["baseline_only_right"]
        row["runs"] += 1
        row["significant"] += int(test["p_mid"] < 0.05)
    record = {"data": DATA[data], "seeds": args.seeds, "head_seeds": args.head_seeds, "rows": rows}
    return record | {"paired": {"defaults": paired}, "runs": {"defaults": runs}}


def select(repo: Path, args: argparse.Namespace, key: str) -> dict:
    """Every candidate of ``key``; the fewest val errors, then the lowest mean val log-loss."""
    tried: dict[str, dict] = {}
    for value in CANDIDATES[key]:
        runs = [
            {
                **{k: r[k] for k in ("data", "seed", "head_seed")},
                "val_errors": r["val"]["n"] - r["val"]["right"],
                "val_log_loss": r["val"]["log_loss"],
                "val_accuracy": r["val"]["accuracy"],
            }
            for r in each_run(repo, args, args.data, assignments(key, value))
        ]
        tried[as_cli(value)] = {
            "val_errors": int(sum(r["val_errors"] for r in runs)),
            "mean_val_log_loss": round(float(np.mean([r["val_log_loss"] for r in runs])), 6),
            "mean_val_accuracy": round(float(np.mean([r["val_accuracy"] for r in runs])), 6),
            "runs": runs,
        }
    chosen = min(tried, key=lambda v: (tried[v]["val_errors"], tried[v]["mean_val_log_loss"]))
    section, names = key.split(".")
    current = yaml.safe_load((ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))[section]
    values = [current[name] for name in names.split("+")]
    now = as_cli(values if "+" in names else values[0])
    return {
        **{"data": args.data, "seeds": args.seeds, "head_seeds": args.head_seeds},
        "rule": "fewest val errors, then lowest mean val log-loss",
        **{"tried": tried, "chosen": chosen, "params_yaml": now},
        "params_yaml_is_chosen": chosen == now,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--select", nargs="*", choices=list(CANDIDATES), metavar="KEY")
    parser.add_argument("--data", nargs="+", default=["mnist"], choices=list(DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[42, 1])
    args = parser.parse_args(argv)
    with scratch("accuracy") as repo:
        for data in args.data if args.select is None else []:
            name = "accuracy.json" if data == "digits" else f"accuracy_{data}.json"
            write_record(ROOT / "bench" / name, accuracy(repo, args, data), "accuracy", argv)
        # One selection record for every key (each run adds or replaces its keys).
        selection = json.loads(SELECTION.read_text()) if SELECTION.exists() else {}
        for key in [] if args.select is None else args.select or list(CANDIDATES):
            selection[key] = select(repo, args, key)
            SELECTION.write_text(record_text(selection) + "\n", encoding="utf-8")
            entry = selection[key]
            print(f"{key}: chosen {entry['chosen']} (params.yaml {entry['params_yaml']})")


if __name__ == "__main__":
    main()
