"""The split stage (``python -m stages.split``) on generated folders, run as a user runs it.

Each test writes a ``<class>/<image>`` folder, points ``data.folder`` at it in a copy of the
project and runs the real stage: counts, skipped files, class names and error messages.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_project, png_bytes, run, snapshot, write_images, write_params

from stages.common import paths
from stages.common.scan import SKIP_REASONS

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("split") / "repo")


@pytest.fixture
def repo(project: Path):
    """The project copy with params restored and data/split removed after each test."""
    original = (project / paths.PARAMS_FILE).read_bytes()
    yield project
    (project / paths.PARAMS_FILE).write_bytes(original)
    shutil.rmtree(project / paths.SPLIT_DIR, ignore_errors=True)


def split(repo: Path, folder: Path, **overrides) -> object:
    """Run the split stage on ``folder`` (32 px); return the CompletedProcess."""
    params = {"data.source": "folder", "data.folder": str(folder), "data.image_size": 32}
    write_params(
        repo, params | {f"data.{k}" if "." not in k else k: v for k, v in overrides.items()}
    )
    return run(["python", "-m", "stages.split"], repo, check=False, timeout=120)


def assert_refused(result, *fragments: str) -> str:
    """Exit status 2, one ERROR line naming the problem, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("ERROR: ")
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    return result.stderr


def split_outputs(repo: Path) -> list[str]:
    folder = repo / paths.SPLIT_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def read_report(repo: Path) -> dict:
    return json.loads((repo / paths.SPLIT_REPORT).read_text(encoding="utf-8"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three classes of 8 good images (Korean and space names) plus every kind of bad file."""
    root = tmp_path / "my photos"
    write_images(root, {"cat": 8, "영": 8, "big dog": 8})
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (root / "cat" / ".hidden.png").write_bytes((root / "cat" / "img_000.png").read_bytes())
    (root / "cat" / "notes.txt").write_text("cats", encoding="utf-8")
    (root / "README.md").write_text("photos", encoding="utf-8")
    (root / "cat" / "nested").mkdir()
    (root / "cat" / "nested" / "a.png").write_bytes((root / "cat" / "img_001.png").read_bytes())
    (root / "영" / "empty.png").write_bytes(b"")
    (root / "영" / "text.jpg").write_text("not a jpeg", encoding="utf-8")
    good = (root / "big dog" / "img_000.png").read_bytes()
    (root / "big dog" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "big dog" / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 8, 0, None))
    (root / "big dog" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "outside.png").write_bytes(good)
    return root


def test_folder_split_counts_skips_and_class_names(repo, photos):
    before = snapshot(photos)
    result = split(repo, photos)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(photos) == before, "the user's folder is never written"

    classes = json.loads((repo / paths.CLASSES).read_text(encoding="utf-8"))
    assert classes == ["big dog", "cat", "영"]
    assert "영" in (repo / paths.CLASSES).read_text(encoding="utf-8"), "UTF-8, not \\u"

    report = read_report(repo)
    assert report["classes"] == 3 and report["image_size"] == 32
    # 8 per class, each split by its content hash (stable_split), at least 1 of each per class.
    assert sum(report["images"].values()) == 24
    for name in SPLITS:
        assert min(report["per_class"][name].values()) >= 1
    assert list(report["skipped"]) == list(SKIP_REASONS), "every reason, always, in one order"
    assert report["skipped"] == {
        "hidden_or_system_file": 3,
        "other_extension": 1,
        "outside_class_folder": 1,
        "nested_folder": 1,
        "symlink_outside": 1,
        "not_a_regular_file": 0,
        "empty_file": 1,
        "unreadable_image": 2,
        "too_large": 1,
        "undecodable_name": 0,
    }
    assert report["skipped_files"]["unreadable_image"] == ["big dog/cut.png", "영/text.jpg"]
    assert report["skipped_files"]["too_large"] == ["big dog/bomb.png"]
    assert report["skipped_files"]["empty_file"] == ["영/empty.png"]

    for name in SPLITS:
        images = np.load(repo / paths.split_images(name), allow_pickle=False)
        labels = np.load(repo / paths.split_labels(name), allow_pickle=False)
        assert images.shape == (report["images"][name], 32, 32, 3) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=3).tolist() == list(report["per_class"][name].values())
        assert images.reshape(len(images), -1).max(axis=1).min() > 0, "no blank (skipped) rows"
    with open(repo / paths.MANIFEST, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert {r["class"] for r in rows} == set(classes)
    assert all(r["source"].split("/")[0] == r["class"] for r in rows)

    out = result.stdout
    counts = ", ".join(f"{s} {report['images'][s]}" for s in SPLITS)
    assert f"3 classes, {counts} images at 32x32, 11 skipped" in out
    assert "big dog/bomb.png: refused as a possible decompression bomb" in out
    assert "영/empty.png: empty file (0 bytes)" in out
    assert f"skipped 1 file(s), {SKIP_REASONS['nested_folder']}: cat/nested" in out
    assert not [p for p in split_outputs(repo) if p.startswith((".tmp-", ".scratch-"))]


def test_split_is_reproducible_byte_for_byte(repo, photos):
    assert split(repo, photos).returncode == 0
    first = {p.name: p.read_bytes() for p in (repo / paths.SPLIT_DIR).iterdir()}
    shutil.rmtree(repo / paths.SPLIT_DIR)
    assert split(repo, photos).returncode == 0
    assert {p.name: p.read_bytes() for p in (repo / paths.SPLIT_DIR).iterdir()} == first


@pytest.mark.parametrize("source", ["digits", "mnist"])
def test_digit_sources_report_zero_skips_for_every_reason(repo, source):
    write_params(repo, {"data.source": source, "data.image_size": 32, "data.max_per_class": 10})
    result = run(["python", "-m", "stages.split"], repo, timeout=120)
    report = read_report(repo)
    assert sum(report["images"].values()) == 100 and "10 classes, train " in result.stdout
    assert report["skipped"] == dict.fromkeys(SKIP_REASONS, 0)
    assert report["source"] == {"digits": "sklearn digits", "mnist": "mnist"}[source]
    assert {"digits": "sklearn", "mnist": "mnist"}[source] in report["route"]  # which route
    assert report["notes"] == {"no_ink_found": 0}
    assert json.loads((repo / "data/split/prep.json").read_text()) == report["prep"]
    originals = np.load(repo / "data/split/test_originals.npy")
    assert originals.shape == (report["images"]["test"], 96, 96, 3)
    assert originals.dtype == np.uint8


def test_empty_class_folder_is_an_error(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 6, "b": 6})
    (tmp_path / "raw" / "empty class").mkdir()
    assert_refused(
        split(repo, tmp_path / "raw"),
        "class folder(s) ['empty class']",
        "hold no usable image",
        "Add images or remove the folder",
    )
    assert split_outputs(repo) == [], "nothing written"


def test_class_whose_files_are_all_unreadable_is_an_error(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 6, "b": 6})
    (tmp_path / "raw" / "c").mkdir()
    for i in range(3):
        (tmp_path / "raw" / "c" / f"{i}.png").write_text("not a png")
    result = split(repo, tmp_path / "raw")
    assert_refused(result, "class folder(s) ['c']", "hold no usable image")
    assert "c/0.png: not a readable image" in result.stdout
    assert split_outputs(repo) == [], "no output and no scratch file left"


def test_single_class_is_an_error(repo, tmp_path):
    write_images(tmp_path / "raw", {"only": 10})
    assert_refused(split(repo, tmp_path / "raw"), "has a single class ['only']", "at least 2")


def test_class_too_small_for_the_split_names_class_and_keys(repo, tmp_path):
    write_images(tmp_path / "raw", {"many": 10, "few": 2})
    assert_refused(
        split(repo, tmp_path / "raw"),
        "class 'few' has 2 image(s)",
        "split.val=0.15 and split.test=0.2",
        "a class needs at least 3 images",
        "Add images to that class",
    )


def test_max_per_class_too_small_for_the_split(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 10, "b": 10})
    assert_refused(split(repo, tmp_path / "raw", max_per_class=2), "class 'a' has 2 image(s)")


def test_max_per_class_caps_every_class(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 30, "b": 10})
    assert split(repo, tmp_path / "raw", max_per_class=10).returncode == 0
    report = read_report(repo)
    assert sum(report["images"].values()) == 20
    assert {c: sum(report["per_class"][s][c] for s in SPLITS) for c in "ab"} == {"a": 10, "b": 10}
    assert min(report["per_class"]["test"].values()) >= 1


def test_missing_folder(repo, tmp_path):
    assert_refused(
        split(repo, tmp_path / "nothing here"),
        f"data.folder '{tmp_path / 'nothing here'}' does not exist",
        "or set data.source: digits",
    )


def test_folder_that_is_a_file(repo, tmp_path):
    (tmp_path / "raw.zip").write_bytes(b"PK\3\4")
    assert_refused(split(repo, tmp_path / "raw.zip"), "is a file, not a folder")


def test_empty_folder(repo, tmp_path):
    (tmp_path / "raw").mkdir()
    assert_refused(split(repo, tmp_path / "raw"), "has no class sub-folders", "<class>/<image>")


def test_only_a_folder_outside_the_repository_warns_that_it_is_not_versioned(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 5, "b": 5})
    result = split(repo, tmp_path / "raw")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, result.stdout
    assert "is outside the repository, so it is not versioned" in warnings[0]
    assert (
        f"git rm -q data/raw/.gitkeep && dvc import-url '{tmp_path / 'raw'}' data/raw"
        in warnings[0]
    )

    write_images(repo / "data" / "raw", {"a": 5, "b": 5})
    try:
        result = split(repo, Path("data/raw"))
    finally:
        for class_dir in ("a", "b"):
            shutil.rmtree(repo / "data" / "raw" / class_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_an_empty_folder_inside_the_repository_says_the_images_are_not_tracked(repo):
    """What a queued experiment sees when the images in data/raw were never committed or
    DVC-tracked: only the template's data/raw/.gitkeep."""
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == [".gitkeep"]
    message = assert_refused(
        split(repo, Path("data/raw")),
        "data.folder 'data/raw' holds no images in this copy of the repository",
        "neither committed nor tracked by DVC",
        "dvc exp run --queue",
        "dvc add 'data/raw' && git add 'data/raw.dvc' 'data/.gitignore' && git commit",
    )
    assert "has no class sub-folders" not in message


def test_images_directly_under_the_root(repo, tmp_path):
    write_images(tmp_path / "raw", {"a": 3})
    for path in (tmp_path / "raw" / "a").iterdir():
        path.rename(tmp_path / "raw" / path.name)
    (tmp_path / "raw" / "a").rmdir()
    assert_refused(split(repo, tmp_path / "raw"), "(3 file(s) lie directly in it)")


def test_classes_of_three_four_and_five_images_split(repo, tmp_path):
    write_images(tmp_path / "raw", {"three": 3, "four": 4, "five": 5})
    result = split(repo, tmp_path / "raw")
    assert result.returncode == 0, result.stdout + result.stderr
    per_class = read_report(repo)["per_class"]
    # Every class gets one test, val and train image at least (fill_empty_splits).
    assert all(min(per_class[s].values()) >= 1 for s in SPLITS)
    assert {c: sum(per_class[s][c] for s in SPLITS) for c in per_class["test"]} == {
        "five": 5,
        "four": 4,
        "three": 3,
    }
