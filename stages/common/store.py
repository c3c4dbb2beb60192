"""Per-image results computed once: the previous run's outputs are the store.

split (prepared images), augment (augmented copies) and extract (features) each write, beside
every output array, an *index*: one row per output row holding the row's key (32 bytes: a
sha256 of everything that determines the row, i.e. the image's content and the params and code
that act on it) and a check (8 bytes: the first bytes of sha256(key + the row's bytes)).

When a stage runs again it looks up each row it needs in the outputs of its previous run: the
files in the workspace if they are still there (a stage run by hand), else the objects that
``dvc.lock`` names in DVC's cache (``dvc repro`` deletes a stage's outputs before running it,
but their cached copies stay). DVC's cache is what queued and ``--temp`` experiments share with
the workspace, and what ``dvc pull`` fills in a second clone, so all of them find the store
with no extra output, no ``persist``, and DVC's run-cache still working. Only rows whose key is
absent, or whose check fails (a corrupt or truncated file), are computed; every row that is
reused is verified first, so the store can only cost time, never give a wrong row.

Nothing here is an output or a dependency: outputs are byte-identical whether the store was
warm or not (tests/test_growing.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import load_npy, release_rows

KEY_BYTES = 32
CHECK_BYTES = 8
INDEX_WIDTH = KEY_BYTES + CHECK_BYTES
LOCK_FILE = Path("dvc.lock")


def part(value: Any) -> bytes:
    """One part as ``digest`` hashes it: bytes as they are, anything else as sorted JSON, after
    its length."""
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
    return len(data).to_bytes(8, "big") + data


def hasher(*parts: Any):
    """A sha256 that has taken ``parts``: ``.copy()`` it to hash many rows after one prefix."""
    h = hashlib.sha256()
    for value in parts:
        h.update(part(value))
    return h


def digest(*parts: Any) -> bytes:
    """sha256 of ``parts`` (bytes as they are, anything else as sorted JSON), length-prefixed."""
    return hasher(*parts).digest()


def code_digest(*files: str | Path) -> str:
    """sha256 of the source files whose code shapes a stored row (a change invalidates the store)."""
    return digest(*(Path(f).read_bytes() for f in files)).hex()


def content_keys(images: np.ndarray, salt: bytes, progress=None, chunk: int = 1024) -> np.ndarray:
    """(N, 32) uint8: sha256(salt + row bytes) of every row of ``images`` (read chunk by chunk)."""
    keys = np.empty((len(images), KEY_BYTES), dtype=np.uint8)
    salted = hashlib.sha256(salt)
    for lo in range(0, len(images), chunk):
        rows = np.ascontiguousarray(images[lo : lo + chunk])
        for i, row in enumerate(rows):
            h = salted.copy()
            h.update(row)  # the row's buffer, not a copy of it
            keys[lo + i] = np.frombuffer(h.digest(), dtype=np.uint8)
        release_rows(images, lo, lo + len(rows))
        if progress is not None:
            progress.add(len(rows))
    return keys


def row_check(key: bytes, row: np.ndarray, extra: bytes = b"") -> bytes:
    """The first bytes of sha256(key + extra + row bytes): what a stored row is verified by."""
    h = hashlib.sha256(key)
    h.update(extra)
    h.update(np.ascontiguousarray(row))
    return h.digest()[:CHECK_BYTES]


def index_rows(keys: np.ndarray, rows: np.ndarray, extras: np.ndarray | None = None) -> np.ndarray:
    """(n, 40 + e) uint8 index of ``rows``: each row's key, its check, then its ``extras`` (e bytes)."""
    width = INDEX_WIDTH + (0 if extras is None else extras.shape[1])
    index = np.empty((len(keys), width), dtype=np.uint8)
    index[:, :KEY_BYTES] = keys
    if extras is not None:
        index[:, INDEX_WIDTH:] = extras
    for i, key in enumerate(keys):
        extra = index[i, INDEX_WIDTH:].tobytes()
        check = row_check(key.tobytes(), rows[i], extra)
        index[i, KEY_BYTES:INDEX_WIDTH] = np.frombuffer(check, dtype=np.uint8)
    return index


def dvc_cache_dir() -> Path:
    """The DVC cache of the repository in the current directory (experiments: the workspace's)."""
    from dvc.config import Config

    configured = Config(dvc_dir=".dvc")["cache"].get("dir")
    return Path(configured) if configured else Path(".dvc/cache")


def _cache_object(cache: Path, md5: str, legacy: bool) -> Path:
    base = cache if legacy else cache / "files" / "md5"
    return base / md5[:2] / md5[2:]


def locked_output_files(stage: str, out: str | Path) -> dict[str, Path]:
    """relpath -> cached file of the output ``out`` of ``stage`` as ``dvc.lock`` has it.

    A directory output gives its files; a file output gives ``{its name: the cached file}``.
    Empty when there is no lock, no such entry, or its objects are not in the cache (never
    pulled, garbage-collected): the store is then cold, which costs time only.
    """
    try:
        import yaml

        lock = yaml.safe_load(LOCK_FILE.read_text(encoding="utf-8")) or {}
        entry = next(o for o in lock["stages"][stage]["outs"] if Path(o["path"]) == Path(out))
        md5 = entry["md5"]
        legacy = entry.get("hash") != "md5"
        cache = dvc_cache_dir()
        if not md5.endswith(".dir"):
            found = _cache_object(cache, md5, legacy)
            return {Path(out).name: found} if found.is_file() else {}
        listing = json.loads(_cache_object(cache, md5, legacy).read_text(encoding="utf-8"))
        files = {item["relpath"]: _cache_object(cache, item["md5"], legacy) for item in listing}
    except (OSError, KeyError, StopIteration, TypeError, ValueError, ImportError) as err:
        if not isinstance(err, FileNotFoundError | KeyError | StopIteration):
            print(f"  store: previous {out} not usable ({type(err).__name__}); computing afresh")
        return {}
    return {name: path for name, path in files.items() if path.is_file()}


def previous_outputs(stage: str, out: str | Path) -> list[dict[str, Path]]:
    """Where the previous run's files of ``out`` may be: the workspace's, then the cached ones."""
    out = Path(out)
    found = []
    if out.is_dir():
        found.append({str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()})
    cached = locked_output_files(stage, out)
    if cached:
        found.append(cached)
    return found


class Store:
    """Rows of earlier outputs by key; each row is verified against its check before use."""

    def __init__(self) -> None:
        self._where: dict[bytes, tuple[int, int]] = {}
        self._sources: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, index_path: Path | None, data_path: Path | None) -> None:
        """Offer the rows of ``data_path`` under the keys in ``index_path`` (bad files are skipped)."""
        if index_path is None or data_path is None:
            return
        try:
            index = load_npy(index_path)
            data = load_npy(data_path, mmap=True)
        except (OSError, ValueError) as err:
            print(f"  store: skipped {data_path} ({type(err).__name__})")
            return
        if index.ndim != 2 or index.shape[1] < INDEX_WIDTH or len(index) != len(data):
            print(f"  store: skipped {data_path} (its index does not match it)")
            return
        source = len(self._sources)
        self._sources.append((index, data))
        for row, key in enumerate(index[:, :KEY_BYTES]):
            self._where.setdefault(key.tobytes(), (source, row))

    def add_outputs(self, stage: str, out: Path, pairs: Iterable[tuple[str, str]]) -> None:
        """Offer every (index file, data file) pair of the previous run's ``out``."""
        for files in previous_outputs(stage, out):
            for index_name, data_name in pairs:
                self.add(files.get(index_name), files.get(data_name))

    def __len__(self) -> int:
        return len(self._where)

    def verify(self, keys: np.ndarray) -> np.ndarray:
        """For each of ``keys`` ((n, 32) uint8): is a row stored and does it pass its check? One
        that fails is dropped. Rows are read source by source, in file order."""
        ok = np.zeros(len(keys), dtype=bool)
        for i, (index, data), rows in self._located(keys):
            try:
                block = np.asarray(data[rows])
            except (OSError, ValueError):
                continue
            entries = index[rows]
            for j, row, entry in zip(i, block, entries, strict=True):
                key = entry[:KEY_BYTES].tobytes()
                check = row_check(key, row, entry[INDEX_WIDTH:].tobytes())
                ok[j] = check == entry[KEY_BYTES:INDEX_WIDTH].tobytes()
        for j in np.flatnonzero(~ok):
            self._where.pop(keys[j].tobytes(), None)
        return ok

    def rows(self, keys: np.ndarray, shape: tuple, dtype, width: int) -> tuple:
        """The stored rows of ``keys`` (all accepted by ``verify``), in order, and their index
        entries; an entry whose width is not ``width`` is left zero (its check is recomputed)."""
        rows = np.empty((len(keys), *shape), dtype=dtype)
        entries = np.zeros((len(keys), width), dtype=np.uint8)
        for i, (index, data), found in self._located(keys):
            rows[i] = data[found]
            if index.shape[1] == width:
                entries[i] = index[found]
        return rows, entries

    def _located(self, keys: np.ndarray):
        """(positions in ``keys``, source, its rows sorted) for each source holding some of them."""
        found = [self._where.get(key.tobytes()) for key in keys]
        for source in {f[0] for f in found if f is not None}:
            picked = sorted((f[1], j) for j, f in enumerate(found) if f and f[0] == source)
            rows = np.array([r for r, _ in picked], dtype=np.int64)
            yield np.array([j for _, j in picked], dtype=np.int64), self._sources[source], rows

    def release(self) -> None:
        """Hand the pages of every stored array read so far back to the OS (``release_rows``)."""
        for _, data in self._sources:
            release_rows(data, 0, len(data))

    def extra(self, key: bytes) -> np.ndarray:
        """The extra index bytes stored with ``key`` (verified with the row)."""
        return self.entry(key)[INDEX_WIDTH:]

    def entry(self, key: bytes) -> np.ndarray:
        """The stored index row of ``key`` (key, check, extras), verified with its row."""
        source, row = self._where[key]
        return self._sources[source][0][row]


def missing_rows(store: Store, keys: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Indices of the rows of ``keys`` the store cannot give (absent, or failing their check).

    Each stored row is read and verified here, so ``Store.rows`` can copy it later unchecked.
    The pages read are released every ``chunk`` rows: memory stays flat in the store's size.
    """
    missing = []
    for lo in range(0, len(keys), chunk):
        missing += (lo + np.flatnonzero(~store.verify(keys[lo : lo + chunk]))).tolist()
        store.release()
    return np.array(missing, dtype=np.int64)


def first_of_each(keys: np.ndarray, which: Sequence[int]) -> tuple[np.ndarray, dict[bytes, int]]:
    """The rows of ``which`` whose key was not seen before, and key -> position among them.

    Identical images (same key) are computed once and the result copied to each row.
    """
    seen: dict[bytes, int] = {}
    picked = []
    for i in which:
        key = keys[i].tobytes()
        if key not in seen:
            seen[key] = len(picked)
            picked.append(i)
    return np.array(picked, dtype=np.int64), seen


def assemble(
    out: np.ndarray,
    keys: np.ndarray,
    store: Store,
    computed: np.ndarray,
    position: dict[bytes, int],
    extras: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Fill ``out`` in order from ``computed`` (rows of new keys) and the store; return its index.

    ``extras`` (rows of bytes stored with each row, e.g. split's notes) go into the index.
    Written chunk by chunk, each chunk's pages (and those read from ``computed`` and the store)
    released, so memory stays flat however large ``out`` is.
    A reused row keeps its verified index entry (same key, row and extras: the same check);
    only new rows are hashed.
    """
    width = INDEX_WIDTH + (0 if extras is None else extras.shape[1])
    index = np.empty((len(keys), width), dtype=np.uint8)
    for lo in range(0, len(keys), chunk):
        hi = min(lo + chunk, len(keys))
        block = np.empty((hi - lo, *out.shape[1:]), dtype=out.dtype)
        found = [position.get(key.tobytes()) for key in keys[lo:hi]]
        new = np.array([j for j, pos in enumerate(found) if pos is not None], dtype=np.int64)
        old = np.array([j for j, pos in enumerate(found) if pos is None], dtype=np.int64)
        if len(new):
            block[new] = computed[[found[j] for j in new]]
        entries = np.zeros((0, width), dtype=np.uint8)
        if len(old):
            block[old], entries = store.rows(keys[lo + old], out.shape[1:], out.dtype, width)
        out[lo:hi] = block
        index[lo + old] = entries
        # A reused entry is kept when it is this row's (key, extras): then its check is too.
        differs = (entries[:, :KEY_BYTES] != keys[lo + old]).any(axis=1)
        if extras is not None:
            differs |= (entries[:, INDEX_WIDTH:] != extras[lo + old]).any(axis=1)
        stale = old[differs]
        fresh = np.concatenate([new, stale])
        if len(fresh):
            index[lo + fresh] = index_rows(
                keys[lo + fresh], block[fresh], None if extras is None else extras[lo + fresh]
            )
        release_rows(out, lo, hi)
        if computed is not None:
            release_rows(computed, 0, len(computed))
        store.release()
    return index
