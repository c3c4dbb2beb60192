"""Test accuracy over split seeds and head seeds: the defaults, the head without augmentation,
a seed-like configuration, and the baselines (on the original images and on the augmented set).

    python -m bench.accuracy [--data digits|mnist] [--seeds 42 7 123] [--head-seeds 42 1]
                             [--configs ...] [--keep DIR]

In one scratch copy of the project (``bench/experiments.py``: params.yaml put back before every
run) runs ``dvc exp run evaluate -S split.seed=S -S train.seed=H ...`` for every configuration,
split seed and head seed, with ImageNet weights. Each run's ``metrics/metrics.json`` and
``metrics/baselines_{pixels,features}.json`` are collected into ``bench/accuracy.json``
(``bench/accuracy_mnist.json`` with ``--data mnist``): every run's val and test
accuracy (with its 95 % Wilson interval), val log-loss, test errors, the paired McNemar tests of
the head against each baseline on the same test images, and wall time; per row the mean,
sample std, min and max of test accuracy. A markdown table of the same goes to stdout. Model
selection inside the runs uses val only; this script only reads what evaluate and baselines
wrote.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from bench.experiments import DATA, IMAGENET, ROOT, exp_run, metrics, scratch, write_record
from stages.common import paths

# Overrides on top of params.yaml. seed_like: the seed project's setup (last block, two dense
# layers with dropout, fixed epochs, no early stopping) on this pipeline's 64 px, 4 copies.
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    # The head's own "no augmentation" row, next to baselines trained on the original images.
    "no_augmentation": ["augment.copies=0"],
    # The baselines on equal terms: trained on the same augmented copies as the head.
    "baselines_augmented": ["baselines.train_on=augmented"],
    "seed_like": [
        "data.image_size=64",
        "augment.copies=4",
        "extract.layer=conv5_block3_out",
        "extract.pooling=avg",
        "train.layers=[512,256]",
        "train.dropout=0.3",
        "train.epochs=30",
        "train.batch_size=256",
        "train.learning_rate=0.001",
        "train.l2=0",
        "train.label_smoothing=0",
        "train.lr_schedule=constant",
        "train.patience=0",
    ],
}
BASELINES = ("logreg_pixels", "svm_rbf_pixels", "logreg_features")


def run_one(repo: Path, seed: int, head_seed: int, overrides: list[str]) -> dict:
    """One ``dvc exp run`` up to evaluate (export adds nothing to the scores); its accuracies,
    baselines, paired tests and wall time."""
    sets = [f"split.seed={seed}", f"train.seed={head_seed}", IMAGENET, *overrides]
    done = exp_run(repo, sets)
    scores = metrics(repo)
    baselines = metrics(repo, paths.BASELINES_PIXELS) | metrics(repo, paths.BASELINES_FEATURES)
    test = scores["test"]
    return {
        "seed": seed,
        "head_seed": head_seed,
        "command": done["command"],
        "seconds": done["seconds"],
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
    return {
        "mean": round(float(a.mean()), 6),
        "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 6),
        "min": round(float(a.min()), 6),
        "max": round(float(a.max()), 6),
    }


def paired_summary(runs: list[dict]) -> dict[str, dict]:
    """Per baseline: the McNemar discordant counts summed over runs, and how many runs had a
    mid-p below 0.05 (the head better, or the baseline better)."""
    found: dict[str, dict] = {}
    for run in runs:
        for name, test in run["paired"].items():
            row = found.setdefault(
                name, {"head_only_right": 0, "baseline_only_right": 0, "runs": 0, "significant": 0}
            )
            row["head_only_right"] += test["head_only_right"]
            row["baseline_only_right"] += test["baseline_only_right"]
            row["runs"] += 1
            row["significant"] += int(test["p_mid"] < 0.05)
    return found


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| row | test accuracy mean ± std (min to max) | val mean |",
        "| --- | --- | --- |",
    ]
    for name, row in rows.items():
        t = row["test"]
        lines.append(
            f"| {name} | {t['mean']:.2%} ± {t['std']:.2%} ({t['min']:.2%} to {t['max']:.2%}) "
            f"| {row['val']['mean']:.2%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=list(DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    with scratch("accuracy", args.keep) as repo:
        for config in args.configs:
            for seed, head_seed in itertools.product(args.seeds, args.head_seeds):
                run = run_one(repo, seed, head_seed, [*DATA[args.data], *CONFIGS[config]])
                runs.setdefault(config, []).append(run)
                print(
                    f"{config} seed {seed} head seed {head_seed}: test "
                    f"{run['test_accuracy']:.4f} ({run['test_errors']} wrong), val "
                    f"{run['val_accuracy']:.4f}, {run['seconds']:.0f}s",
                    flush=True,
                )
    rows: dict[str, dict] = {}
    # Baselines do not depend on the head seed: one value per split seed.
    for config in ("defaults", "baselines_augmented"):
        if config not in runs:
            continue
        once = [r for r in runs[config] if r["head_seed"] == args.head_seeds[0]]
        variant = "augmented" if config == "baselines_augmented" else "original"
        for name in BASELINES:
            rows[f"baseline {name} ({variant} images)"] = {
                split: summary([r["baselines"][name][f"{split}_accuracy"] for r in once])
                for split in ("val", "test")
            }
    for config, config_runs in runs.items():
        rows[config] = {
            split: summary([r[f"{split}_accuracy"] for r in config_runs])
            for split in ("val", "test")
        }
    paired = {config: paired_summary(config_runs) for config, config_runs in runs.items()}
    result = {
        "data": DATA[args.data],
        "seeds": args.seeds,
        "head_seeds": args.head_seeds,
        "configs": CONFIGS,
        "rows": rows,
        "paired": paired,
        "runs": runs,
    }
    out = (
        ROOT
        / "bench"
        / ("accuracy.json" if args.data == "digits" else f"accuracy_{args.data}.json")
    )
    write_record(out, result)
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
