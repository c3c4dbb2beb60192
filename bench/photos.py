"""Photos vs scans of the same handwritten digits, with the image-preparation defaults and without.

    python -m bench.photos [--per-class 100] [--mnist-per-class 200] [--skip ...] [--examples PNG]

Generates (once, cached in the temp folder) the seeded set of ``bench/photo_data.py``:
``--per-class`` real MNIST digits per class as 12-MP phone photos and as clean 28 px scans. Then,
in one scratch copy of the project (``bench/common.py``: params.yaml put back before every run),
runs the whole pipeline (``dvc exp run``, ImageNet weights) on ``scans`` and ``photos``
(``data.source: folder``), each with the defaults and with the old preparation (``data.fit:
stretch, data.crop: none, data.normalise: none``); and on ``data.source: mnist``
(``--mnist-per-class``), whose shipped model is then scored on every MNIST digit its run did not
use, as clean scans and (those among the benchmark photos) as photos. Writes ``bench/photos.json``.
Test accuracy is evaluate's, on each run's own seeded test split.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np

from bench.common import IMAGENET, ROOT, exp_run, metrics, scratch, write_record
from bench.photo_data import example_sheet, photo_set
from stages.common import paths

OLD = ["data.fit=stretch", "data.crop=none", "data.normalise=none"]
PREPS = {"defaults": [], "old behaviour": OLD}


def full_run(repo: Path, sets: list[str]) -> dict:
    """One full ``dvc exp run -S ...`` (export included: the held-out score loads the shipped
    model); evaluate's figures, the preparation used and the wall time."""
    done, scores = exp_run(repo, [IMAGENET, *sets], target=None), metrics(repo)
    return {
        "command": done.command,
        "seconds": round(done.seconds, 1),
        "val_accuracy": scores["val"]["accuracy"],
        "test_accuracy": scores["test"]["accuracy"],
        "test_images": scores["images"]["test"],
        "prep": json.loads((repo / paths.PREP).read_text(encoding="utf-8")),
    }


def heldout_mnist(repo: Path, photos: list[Path]) -> dict:
    """The shipped model of ``repo`` on every MNIST digit its split did not use: as clean scans
    (prepared from the arrays as split prepares them) and, for those among ``photos``, as
    photos (decoded as predict decodes them)."""
    from PIL import Image

    from app.classifier import load_bundle
    from stages.common.classifier import classify
    from stages.common.mnist import load_mnist
    from stages.common.prep import decode_image, prepare_image

    with open(repo / paths.MANIFEST, encoding="utf-8", newline="") as f:
        used = {int(row["source"].split("#")[1]) for row in csv.DictReader(f)}
    mnist, shipped = load_mnist(), load_bundle(repo / paths.MODELS_DIR)
    rest = np.array([i for i in range(len(mnist.labels)) if i not in used])
    scans = np.stack(
        [prepare_image(Image.fromarray(255 - mnist.images[i]), shipped.prep) for i in rest]
    )
    scan_right = int(np.sum(classify(shipped.model, scans).argmax(1) == mnist.labels[rest]))
    held = [p for p in photos if int(p.stem.removeprefix("mnist")) not in used]
    images = np.stack([decode_image(p, shipped.prep) for p in held])
    labels = np.array([int(p.parent.name) for p in held])
    photo_right = int(np.sum(classify(shipped.model, images).argmax(1) == labels))
    return {
        "mnist_route": mnist.route,
        "scans": {"images": len(rest), "accuracy": round(scan_right / len(rest), 6)},
        "photos": {"images": len(held), "accuracy": round(photo_right / max(1, len(held)), 6)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--mnist-per-class", type=int, default=200)
    parser.add_argument("--skip", nargs="*", default=[], choices=["scans", "photos", "mnist"])
    parser.add_argument("--examples", type=Path, help="also draw example photos into this PNG")
    args = parser.parse_args(argv)
    folder, photos, info = photo_set(args.per_class)
    if args.examples:
        example_sheet(folder, args.examples)
    datasets = {
        "scans": ["data.source=folder", f"data.folder={folder / 'scans'}"],
        "photos": ["data.source=folder", f"data.folder={folder / 'photos'}"],
    }
    runs, heldout = [], {}
    with scratch("photos") as repo:
        for (data, sets), (prep, old) in itertools.product(datasets.items(), PREPS.items()):
            if data not in args.skip:
                runs.append({"data": data, "preparation": prep, **full_run(repo, sets + old)})
                print(f"{data}, {prep}: test {runs[-1]['test_accuracy']:.4f}", flush=True)
        if "mnist" not in args.skip:
            sets = ["data.source=mnist", f"data.max_per_class={args.mnist_per_class}"]
            runs.append({"data": "mnist", "preparation": "defaults", **full_run(repo, sets)})
            heldout = {"max_per_class": args.mnist_per_class, **heldout_mnist(repo, photos)}
            print(f"held-out MNIST digits: {heldout}")
    record = {"set": info, "runs": runs, "mnist_heldout": heldout}
    write_record(ROOT / "bench" / "photos.json", record, "photos", argv)


if __name__ == "__main__":
    main()
