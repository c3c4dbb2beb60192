"""Stage 1, split: read the data source, validate it, write a seeded stratified train/val/test split.

Source ``digits`` is scikit-learn's 1,797 real 8x8 handwritten digits, ``mnist`` real 28 px
MNIST digits (``stages/common/mnist.py``), both drawn as dark ink on white like a scan; source
``folder`` is ``data.folder`` laid out as ``<class>/<image>``. Every image is decoded once,
here, and prepared by ``prepare_image`` as the ``data.*`` image params say (crop to the ink,
normalise, fit to a ``data.image_size`` square), then stored as uint8 ``.npy`` arrays that the
later stages memory-map.

Outputs (``data/split/``): ``{train,val,test}_images.npy``, ``{train,val,test}_labels.npy``,
``manifest.csv`` (where each image came from), ``classes.json``, ``report.json``, and
``prep.json`` (the ``ImagePrep`` used, which predict applies to new images), and
``test_originals.npy`` (each test image's file as it was, small, for evaluate's galleries).
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common import paths
from stages.common.errors import PipelineError, run_stage
from stages.common.images import (
    NOTES,
    SKIP_REASONS,
    ImageError,
    ImagePrep,
    decode_image,
    decode_thumbnail,
    prepare_image,
    scan_folder,
    thumbnail,
    unhashable_entries,
)
from stages.common.io import (
    check_room,
    npy_writer,
    open_npy_memmap,
    save_npy,
    scratch_path,
    write_json,
    write_text,
)
from stages.common.params import ParamsError, load_params

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS: tuple = ()  # and data.folder, a param (dvc.yaml: ${data.folder})
WRITES = (paths.SPLIT_DIR,)


DIGIT_CLASSES = [str(d) for d in range(10)]
THUMBNAIL = 96  # side of the small originals shown beside what the model saw


def load_digits_source() -> tuple[list[str], list, np.ndarray, list[str], str]:
    """scikit-learn's digits as (classes, items, labels, names, route); items are 8x8 uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 ink intensity -> dark ink on white paper, 0..255.
    ink = np.rint(255 - digits.images * (255 / 16)).astype(np.uint8)
    names = [f"digits#{i}" for i in range(len(ink))]
    route = "sklearn.datasets.load_digits (bundled with scikit-learn)"
    return DIGIT_CLASSES, list(ink), digits.target.astype(np.int32), names, route


def load_mnist_source() -> tuple[list[str], list, np.ndarray, list[str], str]:
    """Real MNIST digits as (classes, items, labels, names, route), dark ink on white."""
    from stages.common.mnist import load_mnist

    mnist = load_mnist()
    ink = 255 - mnist.images  # MNIST is white ink on black
    names = [f"mnist#{i}" for i in range(len(ink))]
    return DIGIT_CLASSES, list(ink), mnist.labels, names, f"{mnist.route}: {mnist.description}"


def original_thumbnail(item) -> np.ndarray:
    """A small view of a source item as it was, upright, for evaluate's galleries."""
    if isinstance(item, np.ndarray):
        return thumbnail(Image.fromarray(item, mode="L"), THUMBNAIL)
    return decode_thumbnail(item, THUMBNAIL)


def decode_item(item, prep: ImagePrep, notes: list[str]) -> np.ndarray:
    """One source item (a file path, or an in-memory grayscale array) -> (size, size, 3) uint8."""
    if isinstance(item, np.ndarray):
        return prepare_image(Image.fromarray(item, mode="L"), prep, notes)
    return decode_image(item, prep, notes)


def round_half_up(x: float) -> int:
    """Nearest integer, halves up (Python's ``round`` sends 0.5 and 2.5 to the even 0 and 2).

    The 1e-9 absorbs floating-point error in ``n * fraction`` (10 * 0.35 is 3.4999999999999996).
    """
    return math.floor(x + 0.5 + 1e-9)


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(test, val, train) image counts for a class of ``n`` images.

    The rule: test and val each get ``n * fraction`` rounded half up, but at least 1 image (a
    class absent from test or val cannot be scored or selected on); train gets the rest and
    needs at least 1. With the defaults (val 0.15, test 0.2) a class of 3 images gets 1/1/1, of
    4 gets 1/1/2, of 5 gets 1/1/3, of 10 gets 2/2/6. Returns train < 1 when the class is too
    small; the caller stops with a message.
    """
    n_test, n_val = max(1, round_half_up(n * test)), max(1, round_half_up(n * val))
    return n_test, n_val, n - n_test - n_val


def stratified_split(
    labels: np.ndarray,
    classes: list[str],
    val: float,
    test: float,
    seed: int,
    max_per_class: int | None,
) -> dict[str, np.ndarray]:
    """Per class: shuffle (seeded), keep at most ``max_per_class``, cut test then val; rest trains.

    Counts follow ``split_counts``; a class too small for them stops the run naming the class
    and the keys.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for index, name in enumerate(classes):
        members = np.flatnonzero(labels == index)
        members = members[rng.permutation(len(members))]
        if max_per_class is not None:
            members = members[:max_per_class]
        n = len(members)
        n_test, n_val, n_train = split_counts(n, val, test)
        if n_train < 1:
            raise PipelineError(
                f"class '{name}' has {n} image(s): with split.val={val} and split.test={test} it gets "
                f"{n_test} test and {n_val} val image(s) (each at least 1) and {max(0, n_train)} "
                "train image(s); training needs at least 1, so a class needs at least 3 images. "
                "Add images to that class, remove the class folder, or lower split.val / "
                "split.test."
            )
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


PARALLEL_FROM = 64  # files: below this, decoding in one process is quicker than starting more


def _decode_one(job: tuple) -> tuple[np.ndarray | None, list[str], ImageError | None]:
    """(image, notes, None), or (None, notes, the error) for an unusable file."""
    item, prep = job
    notes: list[str] = []
    try:
        return decode_item(item, prep, notes), notes, None
    except ImageError as err:
        return None, notes, err


def _decode_all(items: list, prep: ImagePrep) -> Iterator[tuple]:
    """``_decode_one`` of every item, in order; files on every core (photos are slow to decode)."""
    jobs = ((item, prep) for item in items)
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(items) < PARALLEL_FROM or isinstance(items[0], np.ndarray):
        yield from map(_decode_one, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(_decode_one, jobs, chunksize=16)


def decode_source(
    items: list, names: list[str], prep: ImagePrep, path: Path
) -> tuple[np.ndarray, list[int], dict[str, list[str]], dict[str, list[str]]]:
    """Decode every item once into a memory-mapped .npy at ``path``; unusable files are skipped.

    Returns the memory-mapped images (rows of skipped files left zero), the indices that
    decoded, the names of those that did not (by SKIP_REASONS key), and the names of those
    used with a note (by NOTES key, e.g. a blank page left uncropped).
    """
    good: list[int] = []
    bad: dict[str, list[str]] = {}
    noted: dict[str, list[str]] = {}
    size = prep.image_size
    array = open_npy_memmap(path, (len(items), size, size, 3), np.uint8)
    for i, (image, notes, error) in enumerate(_decode_all(items, prep)):
        if error is None:
            array[i] = image
            good.append(i)
        else:
            print(f"  skipped: {error}")
            bad.setdefault(error.reason, []).append(names[i])
        for note in notes:
            noted.setdefault(note, []).append(names[i])
    for note, which in noted.items():
        shown = ", ".join(which[:5]) + (" ..." if len(which) > 5 else "")
        print(f"  note: {len(which)} image(s), {NOTES[note]}: {shown}")
    return array, good, bad, noted


def space_needed(count: int, size: int) -> int:
    """Bytes split writes at most for ``count`` images: the decoded scratch array, the split
    arrays (together no larger), the test thumbnails, and a margin for the small files."""
    return count * (2 * size * size * 3 + THUMBNAIL * THUMBNAIL * 3 + 8) + 1_000_000


def print_skipped(skipped: dict[str, list[str]]) -> None:
    for reason, names in sorted(skipped.items()):
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        print(f"  skipped {len(names)} file(s), {SKIP_REASONS[reason]}: {shown}")


def unseen_images(folder: str) -> str:
    """Why a folder inside the repository can be empty here although it is full in the workspace."""
    ignore = Path(folder).parent / ".gitignore"
    return (
        f"If your images are in '{folder}' in your workspace, this run cannot see them: they are "
        "neither committed nor tracked by DVC, and queued experiments (dvc exp run --queue), "
        "--temp runs and clones only get what is. Track them with DVC and run again: "
        f"git rm -r -q --cached --ignore-unmatch '{folder}' && dvc add '{folder}' && "
        f"git add '{folder}.dvc' '{ignore}' && git commit (README: Your own images)"
    )


def inside_repository(folder: str | Path) -> bool:
    """True if ``folder`` lies inside the repository that DVC runs the stage in (its cwd)."""
    return Path(folder).resolve().is_relative_to(Path.cwd().resolve())


def load_source(
    data: dict,
) -> tuple[list[str], list, np.ndarray, list[str], dict[str, list[str]], str]:
    """Return (classes, items, labels, names, skipped, route) for the configured source."""
    if data["source"] == "digits":
        classes, items, labels, names, route = load_digits_source()
        return classes, items, labels, names, {}, route
    if data["source"] == "mnist":
        classes, items, labels, names, route = load_mnist_source()
        return classes, items, labels, names, {}, route
    folder = data["folder"]
    scan = scan_folder(folder)
    print_skipped(scan.skipped)
    inside = inside_repository(folder)
    if not inside:
        print(
            f"WARNING: data.folder '{folder}' is outside the repository, so it is not versioned "
            "(DVC records its hash but keeps no copy). To version it: git rm -q data/raw/.gitkeep "
            f"&& dvc import-url '{folder}' data/raw, then set data.folder: data/raw."
        )
    if not scan.classes:
        loose = len(scan.skipped.get("outside_class_folder", []))
        loose_note = f" ({loose} file(s) lie directly in it)" if loose else ""
        layout = "<class>/<image> (e.g. cat/a.jpg, dog/b.jpg)"
        if inside:
            raise PipelineError(
                f"data.folder '{folder}' holds no images in this copy of the repository"
                f"{loose_note}. {unseen_images(folder)}. If it really is empty, lay it out as "
                f"{layout}."
            )
        raise PipelineError(
            f"data.folder '{folder}' has no class sub-folders{loose_note}. Lay it out as {layout}."
        )
    items = [path for path, _ in scan.files]
    names = [str(path.relative_to(folder)) for path in items]
    labels = np.array([label for _, label in scan.files], dtype=np.int32)
    check_classes(scan.classes, labels, folder)
    return scan.classes, items, labels, names, scan.skipped, f"folder {folder}"


def check_classes(classes: list[str], labels: np.ndarray, folder: str) -> None:
    """Stop on classes left without a usable image, or on fewer than two classes."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise PipelineError(
            f"class folder(s) {empty} in '{folder}' hold no usable image (only image files "
            "directly inside a class folder count; skipped files are listed above). Add images "
            "or remove the folder."
        )
    if len(classes) < 2:
        raise PipelineError(
            f"data.folder '{folder}' has a single class {classes}: a classifier needs at least 2 "
            "class sub-folders."
        )


def write_manifest(
    parts: dict[str, np.ndarray], labels: np.ndarray, names: list[str], classes: list[str]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "row", "class", "source"])
    for split in SPLITS:
        for row, i in enumerate(parts[split]):
            writer.writerow([split, row, classes[labels[i]], names[i]])
    write_text(paths.MANIFEST, buffer.getvalue())


def main() -> None:
    params = load_params("data", "split")
    data, split = params["data"], params["split"]
    start = time.perf_counter()
    classes, items, labels, names, skipped, route = load_source(data)
    if data["source"] != "folder" and data["max_per_class"] is not None:
        # In-memory digits always decode: choose before decoding (MNIST has 10,000 or 70,000).
        keep = np.sort(
            np.concatenate(
                list(
                    stratified_split(
                        labels,
                        classes,
                        split["val"],
                        split["test"],
                        split["seed"],
                        data["max_per_class"],
                    ).values()
                )
            )
        )
        items, labels, names = [items[i] for i in keep], labels[keep], [names[i] for i in keep]
    prep = ImagePrep.from_params(data)
    size = prep.image_size
    check_room(paths.SPLIT_DIR, space_needed(len(items), size), "the split's arrays")
    with scratch_path(paths.SPLIT_DIR, ".npy") as scratch:
        images, good, bad, noted = decode_source(items, names, prep, scratch)
        for reason, files in bad.items():
            skipped.setdefault(reason, []).extend(files)
        labels, names = labels[good], [names[i] for i in good]
        if data["source"] == "folder":
            check_classes(classes, labels, data["folder"])
        parts = stratified_split(
            labels, classes, split["val"], split["test"], split["seed"], data["max_per_class"]
        )
        for name in SPLITS:
            rows = np.asarray(good)[parts[name]]
            with npy_writer(paths.split_images(name), (len(rows), size, size, 3), np.uint8) as out:
                for start_row in range(0, len(rows), 1024):
                    out[start_row : start_row + 1024] = images[rows[start_row : start_row + 1024]]
            save_npy(paths.split_labels(name), labels[parts[name]])
        del images
    test_items = [items[i] for i in np.asarray(good)[parts["test"]]]
    save_npy(paths.TEST_ORIGINALS, np.stack([original_thumbnail(item) for item in test_items]))
    write_manifest(parts, labels, names, classes)
    write_json(paths.CLASSES, classes)
    write_json(paths.PREP, prep.as_dict())
    report = {
        "source": {"digits": "sklearn digits", "mnist": "mnist"}.get(
            data["source"], str(data["folder"])
        ),
        "route": route,
        "classes": len(classes),
        "image_size": size,
        "prep": prep.as_dict(),
        "images": {s: len(parts[s]) for s in SPLITS},
        "per_class": {
            s: dict(
                zip(
                    classes,
                    np.bincount(labels[parts[s]], minlength=len(classes)).tolist(),
                    strict=True,
                )
            )
            for s in SPLITS
        },
        # Every reason, 0 included, so that `dvc metrics diff` always compares the same keys.
        "skipped": {reason: len(skipped.get(reason, [])) for reason in SKIP_REASONS},
        "skipped_files": {reason: files for reason, files in sorted(skipped.items())},
        "notes": {note: len(noted.get(note, [])) for note in NOTES},
        "note_files": {note: names for note, names in sorted(noted.items())},
    }
    write_json(paths.SPLIT_REPORT, report)
    counts = ", ".join(f"{s} {len(parts[s])}" for s in SPLITS)
    print(
        f"split: wrote {paths.SPLIT_DIR}/ ({len(classes)} classes, {counts} images at {size}x{size}, "
        f"{sum(map(len, skipped.values()))} skipped) in {time.perf_counter() - start:.1f}s"
    )


def check() -> None:
    """``python -m stages.split --check`` (``make run`` runs it before ``dvc repro``): stop with
    one line when data.folder holds what DVC cannot hash. DVC hashes data.folder, a dependency,
    before split runs: a FIFO there hangs it, a dangling symlink, socket, device or a name that
    is not UTF-8 stops it with an error of its own; split itself would skip and count them."""
    data = load_params("data")["data"]
    if data["source"] != "folder" or not Path(data["folder"]).is_dir():
        return
    found = unhashable_entries(data["folder"])
    if found:
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        raise PipelineError(
            f"data.folder '{data['folder']}' holds {len(found)} entr(y/ies) that DVC cannot hash "
            f"(it reads the folder before split runs, and would hang on a FIFO or stop): {shown}. "
            "Delete or move them out of the folder, rename non-UTF-8 names in UTF-8 (convmv), "
            "then run dvc repro."
        )
    print(f"split: data.folder '{data['folder']}' holds nothing that DVC cannot hash")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        try:
            check()
        except (PipelineError, ParamsError) as err:
            print(f"ERROR: {err}", file=sys.stderr)
            sys.exit(2)
    else:
        run_stage(main)
