"""The photo benchmark set generator (``bench/photo_data.py``) at a tiny size: seeded, oriented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.photo_data import write_set

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("photos") / "set"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    write_set(tmp_path / "a", per_class=2, seed=3, width=90, height=120)
    write_set(tmp_path / "b", per_class=2, seed=3, width=90, height=120)
    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert len([n for n in first if n.endswith(".jpg")]) == 20
    assert len([n for n in first if n.endswith(".png")]) == 20
    assert first == second
    write_set(tmp_path / "c", per_class=1, seed=3, width=90, height=120)
    smaller = files(tmp_path / "c")
    # A smaller set is part of the larger one, byte for byte (photos are seeded per digit).
    assert all(first[name] == data for name, data in smaller.items() if name != "info.json")
    write_set(tmp_path / "d", per_class=1, seed=4, width=90, height=120)
    assert files(tmp_path / "d") != smaller


def test_photos_are_stored_rotated_with_their_exif_orientation(tmp_path: Path) -> None:
    write_set(tmp_path, per_class=3, seed=0, width=90, height=120)
    orientations = set()
    for path in sorted((tmp_path / "photos").rglob("*.jpg")):
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION)
            orientations.add(orientation)
            assert img.size == ((90, 120) if orientation == 1 else (120, 90))
            assert ImageOps.exif_transpose(img).size == (90, 120)  # upright: portrait
    assert orientations <= {1, 6, 8} and len(orientations) >= 2
    scan = np.asarray(Image.open(next((tmp_path / "scans" / "3").glob("*.png"))))
    assert scan.shape == (28, 28) and scan.max() == 255 and scan.min() < 60  # dark on white
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["digits"] == 30 and info["per_class"] == 3
