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
``test_originals.npy`` (each test image's file as it was, small, for evaluate's galleries);
beside each array its index for later runs (``*_index.npy``, stages/common/store.py); and
``metrics/split.json``: images added and removed per class since the previous run, and a
fingerprint of the test set.

The split is stable (``stable_split``): an image's split is a pure function of its content and
``split.seed``, so adding or removing images never moves another image. An image is decoded
once: a later run copies the prepared images of files it has seen from the previous run's
outputs (docs/growing-folder.md).
"""

from __future__ import annotations

import collections
import csv
import hashlib
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
from stages.common.decode import ImageError, decode_thumbnail, thumbnail
from stages.common.errors import PipelineError, run_stage
from stages.common.io import (
    check_room,
    npy_writer,
    open_npy_memmap,
    release_rows,
    save_npy,
    scratch_path,
    write_csv,
    write_json,
)
from stages.common.params import ParamsError, load_params
from stages.common.prep import NOTES, ImagePrep, decode_image, prepare_image
from stages.common.progress import Progress
from stages.common.scan import SKIP_REASONS, scan_folder, unhashable_entries
from stages.common.store import (
    Store,
    assemble,
    code_digest,
    digest,
    first_of_each,
    locked_output_files,
    missing_rows,
    previous_outputs,
)

SPLITS = paths.SPLITS
# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
# data.folder is a param (dvc.yaml: ${data.folder}); MNIST_SET names data.source: mnist's digits.
READS = (paths.MNIST_SET,)
WRITES = (paths.SPLIT_DIR, paths.SPLIT_METRICS)


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
    route = f"{mnist.route}: {mnist.description}, sha256 {mnist.sha256}"
    return DIGIT_CLASSES, list(ink), mnist.labels, names, route


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


def item_identity(item) -> bytes:
    """An image's identity: sha256 of its file's bytes, or of an embedded array's shape and bytes.

    By content, not name: a renamed file keeps its split, and byte-identical duplicates share
    one. An unreadable file gets the hash of its path (decoding will skip it anyway).
    """
    if isinstance(item, np.ndarray):
        return hashlib.sha256(repr(item.shape).encode() + item.tobytes()).digest()
    try:
        with open(item, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return hashlib.sha256(b"unreadable:" + str(item).encode()).digest()


def item_identities(items: list) -> list[bytes]:
    progress = Progress(len(items), "split: hashing") if len(items) > 5000 else None
    found = []
    for item in items:
        found.append(item_identity(item))
        if progress is not None:
            progress.add(1)
    return found


def unit_hash(seed: int, purpose: str, identity: bytes) -> float:
    """A keyed hash of ``identity`` mapped to [0, 1): uniform, and independent per ``purpose``."""
    h = hashlib.sha256(f"{purpose}:{seed}:".encode() + identity).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_intervals(val: float, test: float) -> dict[str, tuple[float, float]]:
    """Where an image's split hash puts it: test [0, test), val [test, test + val), train the rest."""
    return {"test": (0.0, test), "val": (test, test + val), "train": (test + val, 1.0)}


def interval_distance(u: float, interval: tuple[float, float]) -> float:
    lo, hi = interval
    return lo - u if u < lo else (u - hi if u >= hi else 0.0)


def fill_empty_splits(
    u: list[float], tiebreak: list[tuple], chosen: list[str], intervals: dict
) -> list[str]:
    """Give a class with no test, val or train image one, from a split that has two or more.

    For each empty split (test, then val, then train) the image whose hash lies nearest to that
    split's interval moves there (ties: identity, then name). Only a class that the hashes leave
    without some split is touched, and only by these moves.
    """
    chosen = list(chosen)
    for target in ("test", "val", "train"):
        if target in chosen:
            continue
        sizes = {s: chosen.count(s) for s in SPLITS}
        donors = [i for i, s in enumerate(chosen) if sizes[s] >= 2]
        pick = min(donors, key=lambda i: (interval_distance(u[i], intervals[target]), tiebreak[i]))
        chosen[pick] = target
    return chosen


MIN_CLASS = 3  # one test, one val and one train image


def stable_from(val: float, test: float, risk: float = 1e-6) -> int:
    """Least class size at which the hashes leave some split of a class empty with chance < ``risk``.

    From this size on, a class practically never needs ``fill_empty_splits``, so no image of
    it ever moves when images are added or removed (the chance is at most
    (1 - test)^n + (1 - val)^n + (test + val)^n).
    """
    n = MIN_CLASS
    while (1 - test) ** n + (1 - val) ** n + (test + val) ** n >= risk:
        n += 1
    return n


def too_small(name: str, n: int, val: float, test: float, capped: bool) -> PipelineError:
    cap = " or raise data.max_per_class" if capped else ""
    return PipelineError(
        f"class '{name}' has {n} image(s): with split.val={val} and split.test={test} every class "
        f"gets at least 1 test, 1 val and 1 train image, so a class needs at least {MIN_CLASS} "
        f"images. Add images to that class{cap}, or remove the class folder."
    )


def stable_split(
    identities: list[bytes],
    labels: np.ndarray,
    classes: list[str],
    val: float,
    test: float,
    seed: int,
    max_per_class: int | None,
    names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Indices per split; each image's split is a pure function of its identity and ``seed``.

    The rule: an image goes to test if its split hash (``unit_hash(seed, "split", identity)``)
    is below ``test``, to val if below ``test + val``, else to train, so adding or removing
    images never moves another one; a class the hashes leave without a test, val or train image
    gets one by ``fill_empty_splits``. ``max_per_class`` keeps the images with the lowest rank
    hash (a second, independent hash), so raising it only adds images. Classes of fewer than 3
    images stop the run naming the class.
    """
    names = names or [""] * len(identities)
    intervals = split_intervals(val, test)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for index, name in enumerate(classes):
        members = np.flatnonzero(labels == index).tolist()
        if max_per_class is not None:
            rank = {
                i: (unit_hash(seed, "rank", identities[i]), identities[i], names[i])
                for i in members
            }
            members = sorted(members, key=rank.__getitem__)[:max_per_class]
        if len(members) < MIN_CLASS:
            raise too_small(name, len(members), val, test, max_per_class is not None)
        u = [unit_hash(seed, "split", identities[i]) for i in members]
        chosen = [next(s for s, (lo, hi) in intervals.items() if lo <= x < hi) for x in u]
        tiebreak = [(identities[i], names[i]) for i in members]
        chosen = fill_empty_splits(u, tiebreak, chosen, intervals)
        for i, s in zip(members, chosen, strict=True):
            parts[s].append(i)
    return {s: np.array(sorted(parts[s]), dtype=np.int64) for s in SPLITS}


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
) -> tuple[np.ndarray, list[int], dict[str, list[str]], list[list[str]]]:
    """Decode every item once into a memory-mapped .npy at ``path``; unusable files are skipped.

    Returns the memory-mapped images (rows of skipped files left zero), the indices that
    decoded, the names of those that did not (by SKIP_REASONS key), and each item's notes
    (NOTES keys, e.g. a blank page left uncropped).
    """
    good: list[int] = []
    bad: dict[str, list[str]] = {}
    item_notes: list[list[str]] = []
    size = prep.image_size
    if not items:
        return np.zeros((0, size, size, 3), dtype=np.uint8), [], {}, []
    array = open_npy_memmap(path, (len(items), size, size, 3), np.uint8)
    progress = Progress(len(items), "split: decoding") if items else None
    for i, (image, notes, error) in enumerate(_decode_all(items, prep)):
        if error is None:
            array[i] = image
            release_rows(array, i, i + 1)  # memory flat in the folder's size
            good.append(i)
        else:
            print(f"  skipped: {error}")
            bad.setdefault(error.reason, []).append(names[i])
        item_notes.append(notes)
        if progress is not None:
            progress.add(1)
    return array, good, bad, item_notes


NOTE_BITS = {note: 1 << i for i, note in enumerate(NOTES)}  # stored in one byte per image
assert len(NOTE_BITS) <= 8


def notes_byte(notes: list[str]) -> int:
    return sum(NOTE_BITS[note] for note in set(notes))


def notes_of(byte: int) -> list[str]:
    return [note for note, bit in NOTE_BITS.items() if byte & bit]


def print_notes(noted: dict[str, list[str]]) -> None:
    for note, which in noted.items():
        shown = ", ".join(which[:5]) + (" ..." if len(which) > 5 else "")
        print(f"  note: {len(which)} image(s), {NOTES[note]}: {shown}")


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
    parts: dict[str, np.ndarray],
    labels: np.ndarray,
    names: list[str],
    classes: list[str],
    identities: list[bytes],
) -> None:
    rows = [
        [split, row, classes[labels[i]], names[i], identities[i].hex()]
        for split in SPLITS
        for row, i in enumerate(parts[split])
    ]
    write_csv(paths.MANIFEST, [["split", "row", "class", "source", "sha256"], *rows])


def previous_manifest() -> list[dict[str, str]] | None:
    """The rows of the previous run's manifest (workspace, else the cached one), if any."""
    for files in previous_outputs("split", paths.SPLIT_DIR):
        path = files.get(paths.MANIFEST.name)
        if path is None:
            continue
        try:
            rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if rows and "sha256" in rows[0]:
            return rows
    return None


def changes_since(
    previous: list[dict[str, str]] | None,
    identities: list[bytes],
    labels: np.ndarray,
    classes: list[str],
) -> tuple[dict[str, int], dict[str, int]]:
    """Images added and removed per class since ``previous`` (by content; all added if none)."""
    now: dict[str, collections.Counter] = {c: collections.Counter() for c in classes}
    for identity, label in zip(identities, labels, strict=True):
        now[classes[label]][identity.hex()] += 1
    before: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in previous or []:
        before[row["class"]][row["sha256"]] += 1
    every = list(classes) + sorted(set(before) - set(classes))
    added = {c: sum((now.get(c, collections.Counter()) - before[c]).values()) for c in every}
    removed = {c: sum((before[c] - now.get(c, collections.Counter())).values()) for c in every}
    return added, removed


def previous_changes() -> dict | None:
    """The previous run's metrics/split.json (workspace, else DVC's cache via dvc.lock), if any."""
    import json

    found = paths.SPLIT_METRICS if paths.SPLIT_METRICS.is_file() else None
    found = found or locked_output_files("split", paths.SPLIT_METRICS).get(paths.SPLIT_METRICS.name)
    try:
        return json.loads(found.read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError):
        return None


def same_images(
    previous: list[dict[str, str]] | None, identities: list[bytes], labels, classes
) -> bool:
    if previous is None:
        return False
    before = collections.Counter((row["class"], row["sha256"]) for row in previous)
    now = collections.Counter(
        (classes[label], i.hex()) for i, label in zip(identities, labels, strict=True)
    )
    return before == now


def change_metrics(
    identities: list[bytes], labels: np.ndarray, classes: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Added and removed per class since the previous data version.

    A rerun on the same images (``dvc repro -f``, an experiment that changes no data) keeps the
    previous run's figures, so that its outputs stay byte-identical: the figures always describe
    the last change of the data.
    """
    previous = previous_manifest()
    kept = previous_changes()
    if same_images(previous, identities, labels, classes) and kept is not None:
        added, removed = kept.get("added_per_class"), kept.get("removed_per_class")
        if isinstance(added, dict) and isinstance(removed, dict):
            return added, removed
    return changes_since(previous, identities, labels, classes)


def test_fingerprint(identities: list[bytes]) -> int:
    """The test set as one integer (48 bits, exact in JSON): the same images, the same number."""
    h = hashlib.sha256(b"".join(sorted(identities))).digest()
    return int.from_bytes(h[:6], "big")


def prepared_images(
    items: list, names: list[str], keys: np.ndarray, prep: ImagePrep, scratch: Path, store: Store
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Decode only the items whose prepared image the store lacks (each distinct content once).

    Returns (each item's row in the decoded array, -1 for one the store holds; the decoded
    array; each item's notes byte, 255 for an item that could not be decoded; the names of
    those by SKIP_REASONS key).
    """
    missing = missing_rows(store, keys)
    todo, slots = first_of_each(keys, missing)
    decoded, good, bad, todo_notes = decode_source(
        [items[i] for i in todo], [names[i] for i in todo], prep, scratch
    )
    decoded_notes = np.full(len(todo), FAILED, dtype=np.uint8)
    for j in good:
        decoded_notes[j] = notes_byte(todo_notes[j])
    notes = np.empty((len(items), 1), dtype=np.uint8)
    new = slots >= 0
    notes[new, 0] = decoded_notes[slots[new]]
    if not new.all():
        notes[~new] = store.extras(keys[~new])[:, :1]
    print(f"split: decoded {len(todo)} image(s), {len(items) - len(missing)} from the store")
    return slots, decoded, notes, bad


FAILED = 255  # notes byte of an item that could not be decoded


def original_thumbnails(items: list, keys: np.ndarray, store: Store) -> None:
    """Write test_originals.npy (and its index), decoding only the thumbnails the store lacks."""
    missing = missing_rows(store, keys)
    todo, slots = first_of_each(keys, missing)
    computed = np.stack([original_thumbnail(items[i]) for i in todo]) if len(todo) else None
    shape = original_thumbnail(items[0]).shape if computed is None else computed.shape[1:]
    with npy_writer(paths.TEST_ORIGINALS, (len(keys), *shape), np.uint8) as out:
        index = assemble(out, keys, store, computed, slots)
    save_npy(paths.TEST_ORIGINALS_INDEX, index)


def store_keys(salt: bytes, identities: list[bytes]) -> np.ndarray:
    return np.array(
        [np.frombuffer(digest(salt, i), dtype=np.uint8) for i in identities], dtype=np.uint8
    ).reshape(len(identities), 32)


def load_store(pairs: list[tuple[str, str]]) -> Store:
    store = Store()
    store.add_outputs("split", paths.SPLIT_DIR, pairs)
    return store


def main() -> None:
    params = load_params("data", "split")
    data, split = params["data"], params["split"]
    start = time.perf_counter()
    classes, items, labels, names, skipped, route = load_source(data)
    identities = item_identities(items)
    val, test, seed, cap = split["val"], split["test"], split["seed"], data["max_per_class"]
    if data["source"] != "folder" and cap is not None:
        # In-memory digits always decode: choose before decoding (MNIST has 10,000 or 70,000).
        chosen = stable_split(identities, labels, classes, val, test, seed, cap, names)
        keep = np.sort(np.concatenate(list(chosen.values())))
        items, labels, names = [items[i] for i in keep], labels[keep], [names[i] for i in keep]
        identities = [identities[i] for i in keep]
    prep = ImagePrep.from_params(data)
    size = prep.image_size
    code = code_digest(
        __file__, *(Path(paths.__file__).with_name(f) for f in ("decode.py", "prep.py"))
    )
    keys = store_keys(digest("split", prep.as_dict(), code), identities)
    pairs = [(paths.split_index(s).name, paths.split_images(s).name) for s in SPLITS]
    store = load_store(pairs)
    check_room(paths.SPLIT_DIR, space_needed(len(items), size), "the split's arrays")
    with scratch_path(paths.SPLIT_DIR, ".npy") as scratch:
        slots, decoded, notes, bad = prepared_images(items, names, keys, prep, scratch, store)
        for reason, files in bad.items():
            skipped.setdefault(reason, []).extend(files)
        good = np.flatnonzero(notes[:, 0] != FAILED)
        items, labels, names = [items[i] for i in good], labels[good], [names[i] for i in good]
        identities, keys, notes = [identities[i] for i in good], keys[good], notes[good]
        slots = slots[good]
        if data["source"] == "folder":
            check_classes(classes, labels, data["folder"])
        parts = stable_split(identities, labels, classes, val, test, seed, cap, names)
        for name in SPLITS:
            rows = parts[name]
            with npy_writer(paths.split_images(name), (len(rows), size, size, 3), np.uint8) as out:
                index = assemble(out, keys[rows], store, decoded, slots[rows], notes[rows])
            save_npy(paths.split_index(name), index)
            save_npy(paths.split_labels(name), labels[parts[name]])
        del decoded
    noted: dict[str, list[str]] = {}
    for i in range(len(items)):
        for note in notes_of(int(notes[i, 0])):
            noted.setdefault(note, []).append(names[i])
    print_notes(noted)
    test_rows = parts["test"]
    thumb_salt = digest("thumbnail", THUMBNAIL, code)
    thumbs = load_store([(paths.TEST_ORIGINALS_INDEX.name, paths.TEST_ORIGINALS.name)])
    original_thumbnails(
        [items[i] for i in test_rows],
        store_keys(thumb_salt, [identities[i] for i in test_rows]),
        thumbs,
    )
    added, removed = change_metrics(identities, labels, classes)
    write_manifest(parts, labels, names, classes, identities)
    write_json(paths.CLASSES, classes)
    write_json(paths.PREP, prep.as_dict())
    fingerprint = test_fingerprint([identities[i] for i in test_rows])
    write_json(
        paths.SPLIT_METRICS,
        {
            "images": {s: len(parts[s]) for s in SPLITS},
            "test_fingerprint": fingerprint,
            "added": sum(added.values()),
            "removed": sum(removed.values()),
            "added_per_class": added,
            "removed_per_class": removed,
        },
    )
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
        "split_rule": (
            f"by content hash and split.seed: test below {test}, val below {test + val}, "
            "else train; a class left without one gets the nearest image (docs/growing-folder.md)"
        ),
        "stable_from_class_size": stable_from(val, test),
        "test_fingerprint": f"{fingerprint:012x}",
        # Every reason, 0 included, so that `dvc metrics diff` always compares the same keys.
        "skipped": {reason: len(skipped.get(reason, [])) for reason in SKIP_REASONS},
        "skipped_files": {reason: files for reason, files in sorted(skipped.items())},
        "notes": {note: len(noted.get(note, [])) for note in NOTES},
        "note_files": {note: names for note, names in sorted(noted.items())},
    }
    write_json(paths.SPLIT_REPORT, report)
    counts = ", ".join(f"{s} {len(parts[s])}" for s in SPLITS)
    change = (
        f"last change of the data: {sum(added.values())} added, {sum(removed.values())} removed"
    )
    print(
        f"split: wrote {paths.SPLIT_DIR}/ ({len(classes)} classes, {counts} images at {size}x{size}, "
        f"{sum(map(len, skipped.values()))} skipped; {change}) in {time.perf_counter() - start:.1f}s"
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
