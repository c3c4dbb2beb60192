"""A folder that grows: split+augment+extract from scratch vs after adding 1 % of images.

    python -m bench.growing [--images 20000] [--size 64] [--added 0.01] [--keep DIR]

In a scratch git+DVC copy of this project (``tools/scratch.py``) with ``data.source: folder``
and ``data.max_per_class: null`` (every other param as in params.yaml, ``extract.weights:
random`` by default: the same compute as ImageNet's weights, no download), it writes
``--images`` synthetic ``--size`` px PNGs in 10 class folders, tracks them with ``dvc add``,
and times ``dvc repro extract`` (split, augment, extract):

* from scratch;
* after adding ``--added`` of the images as new files (``dvc add``, ``dvc repro extract``):
  only the new images are decoded, augmented and extracted (stages/common/store.py);
* from scratch again in a second copy with a quarter of the images, for the peak memory at
  two folder sizes (memory should be flat in the folder's size).

Peak memory is the largest resident set of any process the run started (``RUSAGE_CHILDREN``).
Writes ``bench/growing.json`` (the numbers, the command, the machine) and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from tools.scratch import command_env, scratch_repo

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "growing.json"
CLASSES = 10
GOAL = 0.10  # after adding 1 %: at most this fraction of the from-scratch time
COUNTED = re.compile(r"(split: decoded|augment: computed|extract: computed) (\d+) image")


def write_image(folder: Path, cls: int, i: int, size: int) -> None:
    """A distinct synthetic photo: a seeded colour field with a class-coloured blob."""
    seed = int.from_bytes(hashlib.sha256(f"{cls}/{i}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(150, 256, (size, size, 3), dtype=np.uint8)
    y, x = rng.integers(size // 4, 3 * size // 4, 2)
    r = size // 6
    pixels[max(0, y - r) : y + r, max(0, x - r) : x + r] = (
        25 * cls % 256,
        80 + 15 * cls,
        200 - 17 * cls,
    )
    path = folder / f"class_{cls}" / f"img_{i:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)


def write_images(folder: Path, start: int, stop: int, size: int) -> None:
    """Images number ``start``..``stop - 1``, spread over the classes in turn."""
    for n in range(start, stop):
        write_image(folder, n % CLASSES, n // CLASSES, size)


def timed(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB of any process it started, its output) of ``cmd``."""
    probe = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(r.stdout + r.stderr); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(r.returncode)"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", probe, *cmd],
        cwd=cwd,
        env=command_env(),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"ERROR: `{' '.join(cmd)}` failed in {cwd}:\n{result.stdout[-4000:]}")
    peak_kb = int(re.findall(r"PEAK_KB (\d+)", result.stdout)[-1])
    return seconds, peak_kb // 1024, result.stdout


def counts(output: str) -> dict[str, int]:
    return {m[1].split(":")[0]: int(m[2]) for m in COUNTED.finditer(output)}


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, env=command_env(), check=True, capture_output=True)


def build(repo: Path, images: int, size: int, params: dict) -> dict:
    """A scratch project with ``images`` tracked images; ``dvc repro extract`` from scratch."""
    scratch_repo(repo, params)
    raw = repo / "data" / "raw"
    run(["git", "rm", "-q", "--ignore-unmatch", "data/raw/.gitkeep"], repo)  # DVC tracks it now
    write_images(raw, 0, images, size)
    run(["dvc", "add", "-q", "data/raw"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "v1"], repo)
    seconds, peak, output = timed(["dvc", "repro", "extract"], repo)
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "peak_rss_mib": peak,
        "computed": counts(output),
    }


def grow(repo: Path, images: int, added: int, size: int) -> dict:
    """Add ``added`` new images, ``dvc add``, ``dvc repro extract``; the time includes dvc add."""
    write_images(repo / "data" / "raw", images, images + added, size)
    start = time.perf_counter()
    run(["dvc", "add", "-q", "data/raw"], repo)
    add_seconds = time.perf_counter() - start
    seconds, peak, output = timed(["dvc", "repro", "extract"], repo)
    return {
        "images": images + added,
        "added": added,
        "seconds": round(seconds, 2),
        "dvc_add_seconds": round(add_seconds, 2),
        "peak_rss_mib": peak,
        "computed": counts(output),
    }


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **{p: installed(p) for p in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "dvc")},
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument(
        "--size", type=int, default=64, help="side of the images and data.image_size"
    )
    parser.add_argument("--added", type=float, default=0.01, help="fraction of images added")
    parser.add_argument("--weights", default="random", help="extract.weights")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    params = {
        "data.source": "folder",
        "data.folder": "data/raw",
        "data.max_per_class": None,
        "data.image_size": args.size,
        "extract.weights": args.weights,
    }
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-growing-"))
    root.mkdir(parents=True, exist_ok=True)
    added = max(1, round(args.images * args.added))
    try:
        print(f"from scratch: {args.images} images at {args.size} px ...", flush=True)
        scratch = build(root / "large", args.images, args.size, params)
        print(f"  {scratch['seconds']} s, computed {scratch['computed']}", flush=True)
        print(f"after adding {added} images ...", flush=True)
        after = grow(root / "large", args.images, added, args.size)
        print(f"  {after['seconds']} s, computed {after['computed']}", flush=True)
        small_n = max(CLASSES * 5, args.images // 4)
        print(f"from scratch: {small_n} images (peak memory at a smaller folder) ...", flush=True)
        small = build(root / "small", small_n, args.size, params)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    ratio = after["seconds"] / scratch["seconds"]
    record = {
        "command": "python -m bench.growing "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "dvc repro extract (split, augment, extract) on a DVC-tracked folder of synthetic PNGs",
        "params": params,
        "from_scratch": scratch,
        "after_adding": after,
        "after_over_from_scratch": round(ratio, 4),
        "goal_after_over_from_scratch": GOAL,
        "goal_met": ratio <= GOAL,
        "peak_rss_mib_by_images": {
            str(small["images"]): small["peak_rss_mib"],
            str(scratch["images"]): scratch["peak_rss_mib"],
        },
        "smaller_folder": small,
        "machine": machine(),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"from scratch {scratch['seconds']} s, after +{added} images {after['seconds']} s "
        f"({ratio:.1%} of it; goal <= {GOAL:.0%}); peak memory "
        f"{small['peak_rss_mib']} MiB at {small['images']} images, "
        f"{scratch['peak_rss_mib']} MiB at {scratch['images']}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
