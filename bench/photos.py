"""Photos vs scans of the same handwritten digits, with the image-preparation defaults and without.

    python -m bench.photos [--per-class 100] [--skip ...] [--examples PNG]

Generates (once, cached in the temp folder) the seeded set of ``bench/photo_data.py``:
``--per-class`` real MNIST digits per class as 12-MP phone photos and as clean 28 px scans. Then,
in one scratch copy of the project (``bench/common.py``: params.yaml put back before every run),
runs the whole pipeline (``dvc exp run``, ImageNet weights) on ``scans`` and ``photos``
(``data.source: folder``), each with the defaults and with the old preparation (``data.fit:
stretch, data.crop: none, data.normalise: none``). Writes ``bench/photos.json``.
Test accuracy is evaluate's, on each run's own seeded test split.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from bench.common import IMAGENET, ROOT, exp_run, metrics, scratch, write_record
from bench.photo_data import example_sheet, photo_set
from stages.common import paths

OLD = ["data.fit=stretch", "data.crop=none", "data.normalise=none"]
PREPS = {"defaults": [], "old behaviour": OLD}


def full_run(repo: Path, sets: list[str]) -> dict:
    """One ``dvc exp run -S ... evaluate``: evaluate's figures, the preparation used and the wall
    time."""
    done, scores = exp_run(repo, [IMAGENET, *sets]), metrics(repo)
    return {
        "command": done.command,
        "seconds": round(done.seconds, 1),
        "val_accuracy": scores["val"]["accuracy"],
        "test_accuracy": scores["test"]["accuracy"],
        "test_images": scores["images"]["test"],
        "prep": json.loads((repo / paths.PREP).read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--skip", nargs="*", default=[], choices=["scans", "photos"])
    parser.add_argument("--examples", type=Path, help="also draw example photos into this PNG")
    args = parser.parse_args(argv)
    folder, _, info = photo_set(args.per_class)
    if args.examples:
        example_sheet(folder, args.examples)
    datasets = {
        "scans": ["data.source=folder", f"data.folder={folder / 'scans'}"],
        "photos": ["data.source=folder", f"data.folder={folder / 'photos'}"],
    }
    runs = []
    with scratch("photos") as repo:
        for (data, sets), (prep, old) in itertools.product(datasets.items(), PREPS.items()):
            if data not in args.skip:
                runs.append({"data": data, "preparation": prep, **full_run(repo, sets + old)})
                print(f"{data}, {prep}: test {runs[-1]['test_accuracy']:.4f}", flush=True)
    record = {"set": info, "runs": runs}
    write_record(ROOT / "bench" / "photos.json", record, "photos", argv)


if __name__ == "__main__":
    main()
