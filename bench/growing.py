"""A folder that grows: split+augment+extract from scratch vs after adding 1 % of images.

    python -m bench.growing [--images 20000] [--size 64] [--added 0.01] [--repeats 3] [--out PATH]

In a scratch copy of the project with ``data.source: folder`` (``extract.weights: random``: the
same compute as ImageNet's, no download) it writes ``--images`` synthetic PNGs in 10 class
folders, tracks them with ``dvc add`` and times ``dvc repro extract`` from scratch, then after
adding ``--added`` of them as new files (only those are decoded, augmented and extracted:
stages/common/store.py), ``--repeats`` times in turn (the median run is the figure: one run
varies by seconds with what the disk is still writing), then from scratch with a quarter of the
images: peak memory (of every process the run started) should be flat in the folder's size.
Each timed run starts after ``sync``. Writes ``bench/growing.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT, run, scratch, write_record

CLASSES = 10
GOAL = 0.10  # after adding 1 %: at most this fraction of the from-scratch time
COUNTED = re.compile(r"(split: decoded|augment: computed|extract: computed) (\d+) image")


def write_images(folder: Path, start: int, stop: int, size: int) -> None:
    """Images ``start``..``stop - 1`` over the classes in turn: seeded colour fields, each with a
    class-coloured square."""
    for n in range(start, stop):
        cls, i = n % CLASSES, n // CLASSES
        rng = np.random.default_rng(
            int.from_bytes(hashlib.sha256(f"{cls}/{i}".encode()).digest()[:8])
        )
        pixels = rng.integers(150, 256, (size, size, 3), dtype=np.uint8)
        (y, x), r = rng.integers(size // 4, 3 * size // 4, 2), size // 6
        pixels[max(0, y - r) : y + r, max(0, x - r) : x + r] = (
            25 * cls % 256,
            80 + 15 * cls,
            200 - 17 * cls,
        )
        path = folder / f"class_{cls}" / f"img_{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="RGB").save(path)


def repro_extract(repo: Path, images: int, **extra: object) -> dict:
    run(["sync"], repo)  # the setup's writes reach the disk before the clock starts
    done = run(["dvc", "repro", "extract"], repo)
    computed = {m[1].split(":")[0]: int(m[2]) for m in COUNTED.finditer(done.output)}
    return {
        "images": images,
        "seconds": round(done.seconds, 2),
        "peak_rss_mib": round(done.peak_rss_mb),
        "computed": computed,
        **extra,
    }


def build(repo: Path, images: int, size: int) -> dict:
    """``images`` tracked images in ``repo``; ``dvc repro extract`` from scratch."""
    run(["git", "rm", "-q", "--ignore-unmatch", "data/raw/.gitkeep"], repo)  # DVC tracks it now
    write_images(repo / "data" / "raw", 0, images, size)
    run(["dvc", "add", "-q", "data/raw"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "v1"], repo)
    return repro_extract(repo, images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument(
        "--size", type=int, default=64, help="side of the images and data.image_size"
    )
    parser.add_argument("--added", type=float, default=0.01, help="fraction of images added")
    parser.add_argument(
        "--repeats", type=int, default=3, help="additions in turn; the median run is the figure"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "growing.json")
    args = parser.parse_args(argv)
    params = {"data.source": "folder", "data.folder": "data/raw", "data.max_per_class": None}
    params |= {"data.image_size": args.size, "extract.weights": "random"}
    added, small_n = max(1, round(args.images * args.added)), max(CLASSES * 5, args.images // 4)
    with scratch("growing", overrides=params) as repo:
        from_scratch = build(repo, args.images, args.size)
        runs, images = [], args.images
        for _ in range(args.repeats):
            write_images(repo / "data" / "raw", images, images + added, size=args.size)
            images += added
            add = run(["dvc", "add", "-q", "data/raw"], repo)
            runs.append(
                repro_extract(repo, images, added=added, dvc_add_seconds=round(add.seconds, 2))
            )
    with scratch("growing", overrides=params) as repo:
        small = build(repo, small_n, args.size)
    after = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
    ratio = after["seconds"] / from_scratch["seconds"]
    record = {
        "what": "dvc repro extract (split, augment, extract) on a DVC-tracked folder of synthetic PNGs",
        "params": params,
        "from_scratch": from_scratch,
        "after_adding": after,
        "after_adding_runs": runs,
        "after_over_from_scratch": round(ratio, 4),
        "goal_after_over_from_scratch": GOAL,
        "goal_met": ratio <= GOAL,
        "peak_rss_mib_by_images": {
            str(r["images"]): r["peak_rss_mib"] for r in (small, from_scratch)
        },
    }
    print(
        f"from scratch {from_scratch['seconds']} s, after +{added} images "
        f"{', '.join(str(r['seconds']) for r in runs)} s (median {ratio:.1%})"
    )
    write_record(args.out, record, "growing", argv)


if __name__ == "__main__":
    main()
