"""Test accuracy over split seeds and head seeds: the defaults, the head without augmentation,
a seed-like configuration, and the baselines (on the original images and on the augmented set).

    python -m bench.accuracy [--data digits|mnist] [--seeds 42 7 123] [--head-seeds 42 1]
                             [--configs ...]

Runs ``dvc exp run evaluate -S split.seed=S -S train.seed=H ...`` (ImageNet weights) for every
configuration, split seed and head seed in one scratch copy (``bench/common.py``: params.yaml
put back before every run) and writes ``bench/accuracy.json`` (``bench/accuracy_<data>.json``
for other data): every run's val and test figures, the paired McNemar tests of the head against
each baseline on the same test images, and per row the mean, sample std, min and max. Model
selection inside the runs uses val only; this script only reads what evaluate wrote.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from bench.common import DATA, IMAGENET, ROOT, exp_run, metrics, scratch, write_record
from stages.common import paths

# Overrides on top of params.yaml. seed_like: the seed project's setup (last block, two dense
# layers with dropout, fixed epochs, no early stopping) on this pipeline's 64 px, 4 copies.
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "no_augmentation": ["augment.copies=0"],  # next to baselines trained on the original images
    "baselines_augmented": ["baselines.train_on=augmented"],  # baselines on the head's copies
    "seed_like": [
        *("data.image_size=64", "augment.copies=4", "extract.layer=conv5_block3_out"),
        *("extract.pooling=avg", "train.layers=[512,256]", "train.dropout=0.3"),
        *("train.epochs=30", "train.batch_size=256", "train.learning_rate=0.001", "train.l2=0"),
        *("train.label_smoothing=0", "train.lr_schedule=constant", "train.patience=0"),
    ],
}
BASELINES = ("logreg_pixels", "svm_rbf_pixels", "logreg_features")


def run_one(repo: Path, seed: int, head_seed: int, overrides: list[str]) -> dict:
    """One ``dvc exp run`` up to evaluate: its scores, the baselines' and the paired tests."""
    done = exp_run(repo, [f"split.seed={seed}", f"train.seed={head_seed}", IMAGENET, *overrides])
    scores, test = metrics(repo), metrics(repo)["test"]
    baselines = metrics(repo, paths.BASELINES_PIXELS) | metrics(repo, paths.BASELINES_FEATURES)
    print(f"{done.command}: test {test['accuracy']:.4f}, {done.seconds:.0f}s", flush=True)
    return {
        "seed": seed,
        "head_seed": head_seed,
        "command": done.command,
        "seconds": round(done.seconds, 1),
        "val_accuracy": scores["val"]["accuracy"],
        "val_log_loss": scores["val"]["log_loss"],
        "test_accuracy": test["accuracy"],
        "test_interval": [test["accuracy_low"], test["accuracy_high"]],
        "test_errors": test["n"] - test["right"],
        "test_ece": test.get("ece"),
        "baselines": {name: baselines[name] for name in BASELINES},
        "paired": scores.get("paired", {}),
    }


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    return {
        k: round(float(v), 6)
        for k, v in {"mean": a.mean(), "std": std, "min": a.min(), "max": a.max()}.items()
    }


def paired_summary(runs: list[dict]) -> dict[str, dict]:
    """Per baseline: the McNemar discordant counts summed over runs, and how many runs had a
    mid-p below 0.05."""
    found: dict[str, dict] = {}
    for run in runs:
        for name, test in run["paired"].items():
            keys = ("head_only_right", "baseline_only_right", "runs", "significant")
            row = found.setdefault(name, dict.fromkeys(keys, 0))
            row["head_only_right"] += test["head_only_right"]
            row["baseline_only_right"] += test["baseline_only_right"]
            row["runs"] += 1
            row["significant"] += int(test["p_mid"] < 0.05)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=list(DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    with scratch("accuracy") as repo:
        runs = {
            config: [
                run_one(repo, seed, head_seed, [*DATA[args.data], *CONFIGS[config]])
                for seed, head_seed in itertools.product(args.seeds, args.head_seeds)
            ]
            for config in args.configs
        }
    rows: dict[str, dict] = {}
    for config, variant in (("defaults", "original"), ("baselines_augmented", "augmented")):
        once = [r for r in runs.get(config, []) if r["head_seed"] == args.head_seeds[0]]
        for name in BASELINES if once else ():  # baselines do not depend on the head seed
            rows[f"baseline {name} ({variant} images)"] = {
                split: summary([r["baselines"][name][f"{split}_accuracy"] for r in once])
                for split in ("val", "test")
            }
    for config, config_runs in runs.items():
        rows[config] = {
            split: summary([r[f"{split}_accuracy"] for r in config_runs])
            for split in ("val", "test")
        }
    for name, row in rows.items():
        print(f"{name}: test {row['test']['mean']:.2%} ± {row['test']['std']:.2%}")
    record = {
        "data": DATA[args.data],
        "seeds": args.seeds,
        "head_seeds": args.head_seeds,
        "configs": CONFIGS,
        "rows": rows,
    }
    record |= {"paired": {config: paired_summary(r) for config, r in runs.items()}, "runs": runs}
    name = "accuracy.json" if args.data == "digits" else f"accuracy_{args.data}.json"
    write_record(ROOT / "bench" / name, record, "accuracy", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
