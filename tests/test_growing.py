"""A folder that grows: the stable split, and per-image results computed once (the store).

The first tests are the split rule on its own (no files); then the stages in a scratch folder
(store reuse, corrupt entries, batch independence); the end-to-end tests (marked slow) run real
``dvc repro``, ``dvc exp run --temp`` and a second clone after ``dvc push``/``dvc pull``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run, write_params

from stages.common import paths
from stages.split import stable_from, stable_split

CLASSES = [f"c{i}" for i in range(10)]


def identities(n: int, salt: str) -> list[bytes]:
    return [hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(n)]


def assignment(ids: list[bytes], labels: np.ndarray, **kw) -> dict[bytes, str]:
    args = {"val": 0.15, "test": 0.2, "seed": 42, "max_per_class": None} | kw
    parts = stable_split(
        ids, labels, CLASSES, args["val"], args["test"], args["seed"], args["max_per_class"]
    )
    return {ids[i]: s for s, rows in parts.items() for i in rows}


def test_adding_one_percent_of_images_moves_no_image() -> None:
    ids, labels = identities(2000, "a"), np.repeat(np.arange(10), 200)
    before = assignment(ids, labels)
    more = ids + identities(20, "new")
    after = assignment(more, np.concatenate([labels, np.arange(20) % 10]))
    assert {k: after[k] for k in before} == before
    counts = {s: list(before.values()).count(s) for s in ("train", "val", "test")}
    assert abs(counts["test"] - 400) < 60 and abs(counts["val"] - 300) < 60  # close to 20 % / 15 %


def test_removing_images_moves_no_other_image() -> None:
    ids, labels = identities(2000, "a"), np.repeat(np.arange(10), 200)
    before = assignment(ids, labels)
    keep = np.ones(2000, bool)
    keep[::7] = False
    after = assignment([ids[i] for i in np.flatnonzero(keep)], labels[keep])
    assert all(before[k] == s for k, s in after.items())


def test_a_different_seed_gives_a_different_split() -> None:
    ids, labels = identities(500, "a"), np.repeat(np.arange(10), 50)
    assert assignment(ids, labels) != assignment(ids, labels, seed=7)


def test_raising_max_per_class_only_adds_images() -> None:
    ids, labels = identities(2000, "a"), np.repeat(np.arange(10), 200)
    small = assignment(ids, labels, max_per_class=50)
    large = assignment(ids, labels, max_per_class=120)
    assert len(small) == 500 and len(large) == 1200
    assert {k: large[k] for k in small} == small


def test_small_classes_get_one_test_one_val_and_one_train_image() -> None:
    sizes = [3, 4, 5, 6, 8, 3, 3, 4, 5, 10]
    labels = np.repeat(np.arange(10), sizes)
    for salt in ("x", "y", "z"):  # several draws of hashes, so fills of every kind happen
        ids = identities(len(labels), salt)
        parts = stable_split(ids, labels, CLASSES, 0.15, 0.2, 42, None)
        for split in ("train", "val", "test"):
            assert set(labels[parts[split]]) == set(range(10)), (salt, split)


def test_classes_from_the_stable_size_on_keep_every_image_when_others_come() -> None:
    n = stable_from(0.15, 0.2)
    assert 80 <= n <= 100  # the documented size for the defaults: (0.85)^n dominates
    labels = np.repeat(np.arange(10), n)
    ids = identities(len(labels), "s")
    before = assignment(ids, labels)
    for k in range(1, 30):  # one image at a time
        more = ids + identities(k, "more")
        after = assignment(more, np.concatenate([labels, np.arange(k) % 10]))
        assert {i: after[i] for i in before} == before


def test_duplicates_land_in_the_same_split() -> None:
    ids = identities(300, "d")
    ids = ids + ids[:40]  # 40 byte-identical copies, possibly in another class folder
    labels = np.concatenate([np.repeat(np.arange(10), 30), np.arange(40) % 10])
    parts = stable_split(ids, labels, CLASSES, 0.15, 0.2, 42, None)
    where = {i: s for s, rows in parts.items() for i in rows}
    assert all(where[i] == where[300 + i] for i in range(40))


# The stages run by hand in a scratch folder (no DVC): the store is the previous outputs there.
STAGE_PARAMS = {
    "data.source": "digits",
    "data.image_size": 32,
    "data.max_per_class": 12,
    "augment.copies": 2,
    "extract.weights": "random",
    "extract.layer": "conv2_block1_out",
    "extract.batch_size": 16,
}
COUNTED = re.compile(r"(split: decoded|augment: computed|extract: computed) (\d+) image")


def computed_counts(output: str) -> dict[str, int]:
    """How many images each stage decoded or computed afresh, from the lines it prints."""
    return {m[1].split(":")[0]: int(m[2]) for m in COUNTED.finditer(output)}


def run_stages(folder: Path, *stages: str) -> dict[str, int]:
    out = ""
    for stage in stages:
        result = run(["python", "-m", f"stages.{stage}"], folder)
        out += result.stdout + result.stderr
    return computed_counts(out)


def outputs(folder: Path) -> dict[str, bytes]:
    dirs = (paths.SPLIT_DIR, paths.AUGMENTED_DIR, paths.FEATURES_DIR)
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for d in dirs
        for p in sorted((folder / d).iterdir())
        if p.suffix in (".npy", ".csv", ".json")
    }


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stages")
    shutil.copytree(Path(__file__).parents[1] / "stages", folder / "stages")
    shutil.copy(Path(__file__).parents[1] / "params.yaml", folder)
    write_params(folder, STAGE_PARAMS)
    counts = run_stages(folder, "split", "augment", "extract")
    n_train = len(np.load(folder / paths.split_labels("train")))
    assert counts == {"split": 120, "augment": 2 * n_train, "extract": 120 + 2 * n_train}
    return folder


def test_a_second_run_computes_nothing_and_writes_the_same_bytes(stage_dir: Path) -> None:
    before = outputs(stage_dir)
    counts = run_stages(stage_dir, "split", "augment", "extract")
    assert counts == {"split": 0, "augment": 0, "extract": 0}
    assert outputs(stage_dir) == before


def flip_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_store_entries_are_recomputed_never_used(stage_dir: Path) -> None:
    before = outputs(stage_dir)
    flip_byte(stage_dir / paths.features("val"), 5)  # a feature of the last val image
    flip_byte(stage_dir / paths.AUGMENTED_IMAGES, 7)  # a pixel of the last copy
    flip_byte(stage_dir / paths.split_images("test"), 9)  # a pixel of the last test image
    (stage_dir / paths.features_index("test")).write_bytes(b"not an index")  # a whole index
    counts = run_stages(stage_dir, "split", "augment", "extract")
    n_test = len(np.load(stage_dir / paths.split_labels("test")))
    # The corrupt test image's row is decoded again; its copies and features follow from the
    # corrected pixels (same bytes as before, so the stored ones pass again except those broken).
    assert counts["split"] == 1
    assert counts["augment"] == 1
    assert counts["extract"] == 1 + n_test  # the val row, and every test row (index unreadable)
    assert outputs(stage_dir) == before


def test_copies_and_features_do_not_depend_on_the_batch() -> None:
    from stages.augment import augment_batch, copy_keys
    from stages.common.tf import setup_keras

    keras = setup_keras(42)
    import tensorflow as tf

    from stages import extract

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    augment = {"rotation": 0.1, "translation": 0.1, "zoom": 0.1, "brightness": 0.1, "contrast": 0.2}
    keys = copy_keys(b"salt", np.arange(5 * 32, dtype=np.uint8).reshape(5, 32), 1)
    together = augment_batch(images, keys, augment)
    alone = np.concatenate(
        [augment_batch(images[i : i + 1], keys[i : i + 1], augment) for i in range(5)]
    )
    np.testing.assert_array_equal(together, alone)
    assert (together != images).any()

    p = {"weights": "random", "layer": "conv2_block1_out", "pooling": "avg", "seed": 1}
    model, _ = extract.build_extractor(keras, p, 32)
    strategy = extract.make_strategy(tf)
    forward = extract.make_forward(tf, model, strategy)
    dim = model.output_shape[-1]
    all_five, first_two = np.zeros((5, dim), np.float32), np.zeros((2, dim), np.float32)
    extract.compute_features(tf, forward, strategy, images, 4, all_five)
    extract.compute_features(tf, forward, strategy, images[3:5], 4, first_two)
    np.testing.assert_array_equal(all_five[3:5], first_two)


def test_copy_and_store_keys_are_the_store_digest_of_their_parts() -> None:
    """The fast key loops hash exactly ``digest``'s parts (the keys of every stored copy)."""
    from stages import augment
    from stages.common.store import code_digest, digest

    images = np.arange(3 * 32, dtype=np.uint8).reshape(3, 32)
    draws = augment.copy_keys(b"salt", images, 2)
    expected = [digest(b"salt", images[i].tobytes(), c) for c in range(2) for i in range(3)]
    assert [k.tobytes() for k in draws] == expected
    code = code_digest(augment.__file__)
    assert [k.tobytes() for k in augment.store_keys(draws)] == [
        digest(code, k.tobytes()) for k in draws
    ]


def test_a_code_change_recomputes_the_copies_but_draws_the_same(monkeypatch) -> None:
    """The store key of a copy names augment.py's code; its random draw does not, so editing the
    file recomputes the copies and gets the same bytes."""
    from stages import augment

    params = {"seed": 42, "rotation": 0.1, "translation": 0.1, "zoom": 0.1}
    params |= {"brightness": 0.1, "contrast": 0.1}
    images = np.arange(3 * 32, dtype=np.uint8).reshape(3, 32)
    draws = augment.copy_keys(augment.augment_salt(params), images, 2)
    stored = augment.store_keys(draws)
    monkeypatch.setattr(augment, "code_digest", lambda *files: "edited")
    assert np.array_equal(augment.copy_keys(augment.augment_salt(params), images, 2), draws)
    assert not np.array_equal(augment.store_keys(draws), stored)


# End to end: a DVC-tracked folder that grows, with real `dvc repro`, `dvc exp run --temp` and
# a second clone after `dvc push` / `dvc pull` (a local-directory remote).
FOLDER_PARAMS = {
    "data.source": "folder",
    "data.folder": "data/raw",
    "data.image_size": 32,
    "data.max_per_class": None,
    "data.crop": "none",
    "data.normalise": "none",
    "augment.copies": 1,
    "extract.weights": "random",
    "extract.layer": "conv2_block1_out",
    "extract.batch_size": 16,
}
FIRST = {"a": 25, "b": 25, "c": 25, "d": 25}


def write_photo(folder: Path, cls: str, i: int, name: str = "img") -> str:
    """A distinct random 48 px PNG (seeded by class and number) as ``folder/<cls>/<name>_<i>.png``."""
    from PIL import Image

    seed = int.from_bytes(hashlib.sha256(f"{cls}{i}".encode()).digest()[:4], "big")
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    pixels[..., "abcd".index(cls) % 3] //= 2  # a little class signal
    (folder / cls).mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(folder / cls / f"{name}_{i:03d}.png")
    return f"{cls}/{name}_{i:03d}.png"


def add_image(repo: Path, cls: str, i: int) -> str:
    return write_photo(repo / "data" / "raw", cls, i, "new")


def manifest(repo: Path) -> dict[str, str]:
    """source -> split, from data/split/manifest.csv."""
    import csv

    rows = csv.DictReader((repo / paths.MANIFEST).read_text(encoding="utf-8").splitlines())
    return {row["source"]: row["split"] for row in rows}


def repro_output(repo: Path, *args: str) -> str:
    """``dvc add data/raw`` then ``dvc repro ... extract``: what the stages printed."""
    run(["dvc", "add", "-q", "data/raw"], repo)
    result = run(["dvc", "repro", *args, "extract"], repo)
    return result.stdout + result.stderr


def repro(repo: Path, *args: str) -> dict[str, int]:
    return computed_counts(repro_output(repo, *args))


SHOWN = ("split: decoded", "split: wrote", "augment: computed", "extract: computed")


def growing_transcript(repro_out: str, diff_out: str) -> str:
    """README's growing-folder excerpt: what split, augment and extract print, then
    ``dvc metrics diff``'s lines for metrics/split.json; stage times blanked."""
    stages = [line for line in repro_out.splitlines() if line.startswith(SHOWN)]
    diff = diff_out.rstrip().splitlines()
    lines = ["$ dvc add data/raw", "$ dvc repro", *stages, "$ dvc metrics diff", diff[0]]
    lines += [line for line in diff[1:] if line.startswith(str(paths.SPLIT_METRICS))]
    return re.sub(r" in \d+(\.\d+)?s\b", " in …s", "\n".join(line.rstrip() for line in lines))


def readme_transcript() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- growing-output -->\n```text\n", 1)[1].split("```", 1)[0]
    return re.sub(r" in \d+(\.\d+)?s\b", " in …s", block.rstrip())


def split_metrics(repo: Path) -> dict:
    import json

    return json.loads((repo / paths.SPLIT_METRICS).read_text())


def locked_outs(repo: Path) -> dict[str, str]:
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    # metrics/split.json is left out: it says what changed since the previous run, by design.
    return {
        o["path"]: o["md5"]
        for s in ("split", "augment", "extract")
        for o in lock[s]["outs"]
        if not o["path"].startswith("metrics/")
    }


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project whose images (4 classes x 25) are tracked by DVC, built and committed."""
    from conftest import git_commit, scratch_repo

    repo = scratch_repo(tmp_path_factory.mktemp("grow") / "repo", FOLDER_PARAMS)
    for cls, n in FIRST.items():
        for i in range(n):
            write_photo(repo / "data" / "raw", cls, i)
    run(["git", "rm", "-q", "data/raw/.gitkeep"], repo)
    counts = repro(repo)
    n_train = sum(1 for s in manifest(repo).values() if s == "train")
    assert counts == {"split": 100, "augment": n_train, "extract": 100 + n_train}
    assert split_metrics(repo)["added"] == 100
    git_commit(repo, "first 100 images")
    return repo


@pytest.mark.slow
def test_adding_one_percent_computes_only_the_new_image(grown: Path, tmp_path: Path) -> None:
    before = manifest(grown)
    fingerprint = split_metrics(grown)["test_fingerprint"]
    new = add_image(grown, "a", 33)  # lands in test: the README shows it
    repro_out = repro_output(grown)
    counts = computed_counts(repro_out)
    diff_out = run(["dvc", "metrics", "diff"], grown).stdout
    print(growing_transcript(repro_out, diff_out))
    # README.md shows this run's output (only the stage times differ).
    assert growing_transcript(repro_out, diff_out) == readme_transcript()
    after = manifest(grown)
    assert {k: after[k] for k in before} == before  # no image moved
    trained = after[new] == "train"
    # augment runs only if the training images changed (DVC skips it otherwise).
    assert counts.get("augment", 0) == int(trained)
    assert (counts["split"], counts["extract"]) == (1, 1 + int(trained))
    metrics = split_metrics(grown)
    assert (metrics["added"], metrics["removed"], metrics["added_per_class"]["a"]) == (1, 0, 1)
    assert (metrics["test_fingerprint"] == fingerprint) == (after[new] != "test")

    # From scratch (no store: DVC's cache set aside) gives the same bytes and the same lock.
    warm, warm_lock = outputs(grown), locked_outs(grown)
    (grown / ".dvc" / "cache").rename(tmp_path / "cache-aside")
    counts = repro(grown, "-f")
    assert counts["split"] == 101
    assert outputs(grown) == warm
    assert locked_outs(grown) == warm_lock


@pytest.mark.slow
def test_removing_images_computes_nothing_and_moves_nothing(grown: Path) -> None:
    before = manifest(grown)
    removed = ["b/img_003.png", "c/img_010.png", "d/img_020.png"]
    for name in removed:
        (grown / "data" / "raw" / name).unlink()
    counts = repro(grown)
    assert set(counts.values()) == {0}
    after = manifest(grown)
    assert after == {k: v for k, v in before.items() if k not in removed}
    assert split_metrics(grown)["removed"] == 3


@pytest.mark.slow
def test_a_temp_experiment_reuses_the_stored_features(grown: Path, tmp_path: Path) -> None:
    from conftest import git_commit

    git_commit(grown, "101 - 3 images")
    new = add_image(grown, "b", 40)
    run(["dvc", "add", "-q", "data/raw"], grown)
    result = run(["dvc", "exp", "run", "--temp", "extract"], grown)
    counts = computed_counts(result.stdout + result.stderr)
    assert counts["split"] == 1 and counts["extract"] in (1, 2), result.stdout[-3000:]
    del new


@pytest.mark.slow
def test_a_second_clone_reuses_the_pushed_features(grown: Path, tmp_path: Path) -> None:
    from conftest import git_commit

    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], grown)
    repro(grown)
    git_commit(grown, "102 images, a local remote")
    run(["dvc", "push", "-q"], grown)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(grown), str(clone)], tmp_path)
    # The scratch copy's dvc.lock also names later stages' outputs, never built here.
    run(["dvc", "pull", "-q", "--with-deps", "extract"], clone)
    before = manifest(clone)
    add_image(clone, "c", 50)
    counts = repro(clone)
    assert counts["split"] == 1 and counts["extract"] in (1, 2)
    after = manifest(clone)
    assert {k: after[k] for k in before} == before
