"""Photos vs scans of the same handwritten digits, with the image-preparation defaults and without.

    python -m bench.photos [--set DIR] [--per-class 100] [--mnist-per-class 200] [--keep DIR]

Generates (once, cached in ``--set``) the seeded benchmark set of ``bench/photo_data.py``:
``--per-class`` real MNIST digits per class as 12-MP phone photos and as clean 28 px scans.
Then, in a scratch git+DVC copy of this project (``bench/experiments.py``: params.yaml put back
before every run), runs the real pipeline
(``dvc exp run``, ImageNet weights) on:

* ``scans`` and ``photos`` (``data.source: folder``), each with the defaults and with the old
  behaviour (``data.fit: stretch, data.crop: none, data.normalise: none``), all in one run;
* the embedded digits (``data.source: digits``), defaults and old behaviour;
* ``data.source: mnist`` with ``data.max_per_class: --mnist-per-class``, timed, and the model
  it produces scored on every MNIST digit it did not train, validate or test on, as clean
  scans and (those of the benchmark photos) as photos.

Prints a markdown table and writes ``bench/photos.json``. Test accuracy is evaluate's, on
each run's own seeded test split; nothing here selects a model on test.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.experiments import IMAGENET, ROOT, exp_run, metrics, scratch, write_record
from bench.photo_data import photo_files, write_set
from stages.common import paths

OUT = ROOT / "bench" / "photos.json"
SET_ROOT = Path(tempfile.gettempdir())  # the set goes to photo-bench-<per-class> there
OLD = ["data.fit=stretch", "data.crop=none", "data.normalise=none"]
PREPS = {"defaults": [], "old behaviour": OLD}


def dvc_exp_run(repo: Path, sets: list[str]) -> dict:
    """One full ``dvc exp run -S ...`` (export included: the held-out score loads the shipped
    model); evaluate's figures, the preparation used and the wall time."""
    done = exp_run(repo, [IMAGENET, *sets], target=None)
    scores = metrics(repo)
    split = re.search(r"split: wrote .* in ([\d.]+)s", done["output"])
    return {
        "command": done["command"],
        "seconds": done["seconds"],
        # split's own time (decoding and preparing every image), as the stage prints it
        "split_seconds": float(split.group(1)) if split else None,
        "val_accuracy": scores["val"]["accuracy"],
        "test_accuracy": scores["test"]["accuracy"],
        "test_images": scores["images"]["test"],
        "prep": json.loads((repo / paths.PREP).read_text(encoding="utf-8")),
    }


def heldout_mnist(repo: Path, photo_set: Path) -> dict:
    """The trained model of ``repo`` on every MNIST digit its split did not use.

    As clean scans (prepared from the arrays exactly as split prepares them) and, for the
    held-out digits among the benchmark photos, as photos (decoded as predict decodes them).
    """
    from PIL import Image

    from app.classifier import load_bundle
    from stages.common.classifier import classify
    from stages.common.mnist import load_mnist
    from stages.common.prep import decode_image, prepare_image

    with open(repo / paths.MANIFEST, encoding="utf-8", newline="") as f:
        used = {int(row["source"].split("#")[1]) for row in csv.DictReader(f)}
    mnist = load_mnist()
    rest = np.array([i for i in range(len(mnist.labels)) if i not in used])
    shipped = load_bundle(repo / paths.MODELS_DIR)  # the exported model, as predict uses it
    prep = shipped.prep
    scans = np.stack([prepare_image(Image.fromarray(255 - mnist.images[i]), prep) for i in rest])
    scan_right = int(np.sum(classify(shipped.model, scans).argmax(1) == mnist.labels[rest]))
    photos = photo_files(photo_set / "photos")
    held = [p for p in photos if int(p.stem.removeprefix("mnist")) not in used]
    images = np.stack([decode_image(p, prep) for p in held])
    labels = np.array([int(p.parent.name) for p in held])
    photo_right = int(np.sum(classify(shipped.model, images).argmax(1) == labels))
    return {
        "mnist_route": mnist.route,
        "scans": {"images": len(rest), "accuracy": round(scan_right / len(rest), 6)},
        "photos": {"images": len(held), "accuracy": round(photo_right / max(1, len(held)), 6)},
    }


def table(runs: dict) -> str:
    lines = [
        "| data | preparation | test accuracy | val accuracy | test images | split | dvc exp run |"
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for (data, prep), run in runs.items():
        lines.append(
            f"| {data} | {prep} | {run['test_accuracy']:.2%} | {run['val_accuracy']:.2%} "
            f"| {run['test_images']} | {run['split_seconds']} s | {run['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def run_all(repo: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Every run the arguments ask for, in ``repo``; the runs and the held-out scores."""
    runs: dict[tuple[str, str], dict] = {}
    datasets = {
        "scans": ["data.source=folder", f"data.folder={args.set / 'scans'}"],
        "photos": ["data.source=folder", f"data.folder={args.set / 'photos'}"],
        "embedded digits": ["data.source=digits"],
    }
    for data, sets in datasets.items():
        if data in args.skip:
            continue
        for prep, overrides in PREPS.items():
            runs[data, prep] = dvc_exp_run(repo, sets + overrides)
            print(f"{data}, {prep}: test {runs[data, prep]['test_accuracy']:.4f}", flush=True)
    heldout: dict = {}
    if "mnist" not in args.skip:
        mnist_run = dvc_exp_run(
            repo, ["data.source=mnist", f"data.max_per_class={args.mnist_per_class}"]
        )
        runs["mnist", "defaults"] = mnist_run
        heldout = {"max_per_class": args.mnist_per_class, **heldout_mnist(repo, args.set)}
    return runs, heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--set", type=Path, help="benchmark set folder (a cache; default: a temp dir)"
    )
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--mnist-per-class", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["scans", "photos", "embedded digits", "mnist"],
        help="leave these runs out (a quicker partial measurement)",
    )
    args = parser.parse_args()
    args.set = args.set or SET_ROOT / f"photo-bench-{args.per_class}"
    info = write_set(args.set, args.per_class, 0, 3024, 4032)
    counts = {len(photo_files(d)) for d in (args.set / "photos").iterdir()}
    if counts != {args.per_class}:
        sys.exit(
            f"{args.set} holds {sorted(counts)} photos per class, not {args.per_class}: use a new --set"
        )
    with scratch("photos", args.keep) as repo:
        runs, heldout = run_all(repo, args)
    print(table(runs))
    if heldout:
        print(
            f"data.source mnist, max_per_class {args.mnist_per_class}: full dvc exp run "
            f"{runs['mnist', 'defaults']['seconds']:.0f} s; held-out MNIST digits: scans "
            f"{heldout['scans']['accuracy']:.2%} of {heldout['scans']['images']}, photos "
            f"{heldout['photos']['accuracy']:.2%} of {heldout['photos']['images']}"
        )
    result = {
        "set": info,
        "runs": [{"data": d, "preparation": p, **r} for (d, p), r in runs.items()],
        "mnist_heldout": heldout,
    }
    write_record(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
