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

import functools
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


def digest(*parts: Any) -> bytes:
    """sha256 of ``parts`` (bytes as they are, anything else as sorted JSON), length-prefixed."""
    h = hashlib.sha256()
    for value in parts:
        h.update(part(value))
    return h.digest()


def code_digest(*files: str | Path) -> str:
    """sha256 of the source files whose code shapes a stored row (a change invalidates the store)."""
    return digest(*(Path(f).read_bytes() for f in files)).hex()


def row_digests(
    rows: np.ndarray, prefixes: np.ndarray | bytes, length: int = KEY_BYTES
) -> np.ndarray:
    """(n, length) uint8: the first bytes of sha256(prefix + row bytes) of each row.

    ``prefixes``: one bytes for every row, or (n, p) uint8, a prefix per row. The loop touches
    only Python bytes and memoryviews: over a hundred thousand rows, per-row NumPy calls cost
    more than the hashing.
    """
    rows = np.ascontiguousarray(rows)
    n = len(rows)
    data = memoryview(rows.reshape(n, -1)).cast("B") if n else memoryview(b"")
    size = rows[0].nbytes if n else 0
    if isinstance(prefixes, bytes):  # one prefix: hashed once, copied for each row
        salted, table, width = hashlib.sha256(prefixes), b"", 0
    else:
        salted, width = hashlib.sha256(), prefixes.shape[1]
        table = np.ascontiguousarray(prefixes, dtype=np.uint8).tobytes()
    out = bytearray()
    for j in range(n):
        h = salted.copy()
        if width:
            h.update(table[j * width : (j + 1) * width])
        h.update(data[j * size : (j + 1) * size])
        out += h.digest()[:length]
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(n, length)


def content_keys(images: np.ndarray, salt: bytes, progress=None, chunk: int = 1024) -> np.ndarray:
    """(N, 32) uint8: sha256(salt + row bytes) of every row of ``images`` (read chunk by chunk)."""
    keys = np.empty((len(images), KEY_BYTES), dtype=np.uint8)
    for lo in range(0, len(images), chunk):
        rows = np.ascontiguousarray(images[lo : lo + chunk])
        keys[lo : lo + len(rows)] = row_digests(rows, salt)
        release_rows(images, lo, lo + len(rows))
        if progress is not None:
            progress.add(len(rows))
    return keys


def row_checks(index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, 8) uint8: the check of each row under its index entry (key, check, extras): the first
    bytes of sha256(key + extras + row bytes)."""
    prefixes = np.concatenate([index[:, :KEY_BYTES], index[:, INDEX_WIDTH:]], axis=1)
    return row_digests(rows, prefixes, CHECK_BYTES)


def index_rows(keys: np.ndarray, rows: np.ndarray, extras: np.ndarray | None = None) -> np.ndarray:
    """(n, 40 + e) uint8 index of ``rows``: each row's key, its check, then its ``extras`` (e bytes)."""
    width = INDEX_WIDTH + (0 if extras is None else extras.shape[1])
    index = np.zeros((len(keys), width), dtype=np.uint8)
    index[:, :KEY_BYTES] = keys
    if extras is not None:
        index[:, INDEX_WIDTH:] = extras
    index[:, KEY_BYTES:INDEX_WIDTH] = row_checks(index, rows)
    return index


def dvc_cache_dir() -> Path:
    """The DVC cache of the repository in the current directory (experiments: the workspace's)."""
    from dvc.config import Config

    configured = Config(dvc_dir=".dvc")["cache"].get("dir")
    return Path(configured) if configured else Path(".dvc/cache")


def _cache_object(cache: Path, md5: str, legacy: bool) -> Path:
    base = cache if legacy else cache / "files" / "md5"
    return base / md5[:2] / md5[2:]


def read_lock(path: Path) -> dict:
    """``dvc.lock`` as data, parsed once per version of the file (a stage reads it several
    times; DVC rewrites it only after the stage ends)."""
    info = path.stat()
    return _parsed_lock(path.resolve(), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=1)
def _parsed_lock(path: Path, mtime_ns: int, size: int) -> dict:
    import yaml

    try:  # libyaml's safe loader where PyYAML has it: the same data, several times faster
        from yaml import CSafeLoader as SafeLoader
    except ImportError:
        from yaml import SafeLoader
    return yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader) or {}


def locked_output_files(stage: str, out: str | Path) -> dict[str, Path]:
    """relpath -> cached file of the output ``out`` of ``stage`` as ``dvc.lock`` has it.

    A directory output gives its files; a file output gives ``{its name: the cached file}``.
    Empty when there is no lock, no such entry, or its objects are not in the cache (never
    pulled, garbage-collected): the store is then cold, which costs time only.
    """
    try:
        lock = read_lock(LOCK_FILE)
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
    """Rows of earlier outputs by key; each row is verified against its check before use.

    Keys are looked up all at once with NumPy (sorted by their first 8 bytes, then compared
    whole), not one by one: a folder of tens of thousands of images has over a hundred thousand
    stored rows, and a Python loop per row was most of a rerun's time. Where a key is stored
    more than once, the first source added holds it.
    """

    def __init__(self) -> None:
        self._sources: list[tuple[np.ndarray, np.ndarray]] = []
        self._lookup: tuple[np.ndarray, ...] | None = None
        self._dropped = np.zeros(0, dtype=bool)  # per stored row: failed its check

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
        self._sources.append((index, data))
        self._lookup = None
        self._dropped = np.concatenate([self._dropped, np.zeros(len(index), dtype=bool)])

    def add_outputs(self, stage: str, out: Path, pairs: Iterable[tuple[str, str]]) -> None:
        """Offer every (index file, data file) pair of the previous run's ``out``."""
        for files in previous_outputs(stage, out):
            for index_name, data_name in pairs:
                self.add(files.get(index_name), files.get(data_name))

    def _table(self) -> tuple[np.ndarray, ...]:
        """(every stored key, their 8-byte prefixes sorted, the order that sorts them, each
        stored row's source and row in it), built once after the last ``add``."""
        if self._lookup is None:
            indexes = [index for index, _ in self._sources]
            keys = np.concatenate([i[:, :KEY_BYTES] for i in indexes] or [np.zeros((0, 32))])
            keys = np.ascontiguousarray(keys, dtype=np.uint8)
            prefixes = keys[:, :8].copy().view(np.uint64).ravel()
            order = np.argsort(prefixes, kind="stable")  # the first source first among equals
            sources = np.repeat(np.arange(len(indexes)), [len(i) for i in indexes])
            rows = np.concatenate([np.arange(len(i)) for i in indexes] or [np.zeros(0, int)])
            self._lookup = (keys, prefixes[order], order, sources, rows)
        return self._lookup

    def find(self, keys: np.ndarray) -> np.ndarray:
        """For each of ``keys`` ((n, 32) uint8), the stored row holding it (a number over every
        source), or -1 where none does (never stored, or dropped by ``verify``)."""
        stored, sorted_prefixes, order, _, _ = self._table()
        keys = np.ascontiguousarray(keys, dtype=np.uint8).reshape(-1, KEY_BYTES)
        found = np.full(len(keys), -1, dtype=np.int64)
        if not len(stored) or not len(keys):
            return found
        prefixes = keys[:, :8].copy().view(np.uint64).ravel()
        at = np.searchsorted(sorted_prefixes, prefixes)
        inside = at < len(order)
        first = order[np.minimum(at, len(order) - 1)]
        same = inside & (stored[first] == keys).all(axis=1)
        found[same] = first[same]
        # Another key with the same 8 first bytes sorted before this one (never seen in
        # practice): look along the run of equal prefixes.
        for j in np.flatnonzero(
            inside & ~same & (sorted_prefixes[np.minimum(at, len(order) - 1)] == prefixes)
        ):
            k = at[j]
            while k < len(order) and sorted_prefixes[k] == prefixes[j]:
                if (stored[order[k]] == keys[j]).all():
                    found[j] = order[k]
                    break
                k += 1
        hit = found >= 0
        found[hit] = np.where(self._dropped[found[hit]], -1, found[hit])
        return found

    def _by_source(self, found: np.ndarray):
        """(positions in ``found``, source, its rows in file order) for each source holding some."""
        _, _, _, sources, rows = self._table()
        present = np.flatnonzero(found >= 0)
        source_of = sources[found[present]]
        for source in np.unique(source_of):
            where = present[source_of == source]
            local = rows[found[where]]
            order = np.argsort(local, kind="stable")
            yield where[order], self._sources[source], local[order]

    def verify(self, keys: np.ndarray) -> np.ndarray:
        """For each of ``keys`` ((n, 32) uint8): is a row stored and does it pass its check? One
        that fails is dropped. Rows are read source by source, in file order."""
        found = self.find(keys)
        ok = np.zeros(len(keys), dtype=bool)
        for i, (index, data), rows in self._by_source(found):
            try:
                block = np.asarray(data[rows])
            except (OSError, ValueError):
                continue
            entries = index[rows]
            checks = row_checks(entries, block)
            ok[i] = (checks == entries[:, KEY_BYTES:INDEX_WIDTH]).all(axis=1)
        self._dropped[found[(found >= 0) & ~ok]] = True
        return ok

    def copy_rows(
        self, keys: np.ndarray, out: np.ndarray, at: np.ndarray, index: np.ndarray
    ) -> None:
        """Copy the stored rows of ``keys`` (all accepted by ``verify``) into ``out[at]``, and
        their index entries into ``index[at]`` where the widths agree (others are left as they
        are). A run of consecutive rows is copied as one slice, straight from the file."""
        for i, (stored_index, data), rows in self._by_source(self.find(keys)):
            into = consecutive(at[i])
            out[into] = data[consecutive(rows)]
            if stored_index.shape[1] == index.shape[1]:
                index[into] = stored_index[rows]

    def extras(self, keys: np.ndarray) -> np.ndarray:
        """The extra index bytes stored with each of ``keys`` (all accepted by ``verify``)."""
        found = self.find(keys)
        width = min(index.shape[1] for index, _ in self._sources) if self._sources else INDEX_WIDTH
        extras = np.zeros((len(keys), width - INDEX_WIDTH), dtype=np.uint8)
        for i, (index, _), rows in self._by_source(found):
            extras[i] = index[rows, INDEX_WIDTH:width]
        return extras

    def release(self) -> None:
        """Hand the pages of every stored array read so far back to the OS (``release_rows``)."""
        for _, data in self._sources:
            release_rows(data, 0, len(data))


def consecutive(rows: np.ndarray) -> slice | np.ndarray:
    """``rows`` as a slice where they are consecutive (a view instead of a gathered copy)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def missing_rows(store: Store, keys: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Indices of the rows of ``keys`` the store cannot give (absent, or failing their check).

    Each stored row is read and verified here, so ``Store.rows`` can copy it later unchecked.
    The pages read are released every ``chunk`` rows: memory stays flat in the store's size.
    """
    missing = []
    for lo in range(0, len(keys), chunk):
        missing.append(lo + np.flatnonzero(~store.verify(keys[lo : lo + chunk])))
        store.release()
    return np.concatenate(missing or [np.zeros(0, dtype=np.int64)]).astype(np.int64)


def first_of_each(keys: np.ndarray, which: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``which`` whose key was not seen before among them, and for every row of
    ``keys`` its position among those (-1 for a row outside ``which``).

    Identical images (same key) are computed once and the result copied to each row.
    """
    which = np.asarray(which, dtype=np.int64)
    slots = np.full(len(keys), -1, dtype=np.int64)
    if not len(which):
        return which, slots
    picked_keys = np.ascontiguousarray(keys[which], dtype=np.uint8).view(f"V{KEY_BYTES}").ravel()
    _, first, inverse = np.unique(picked_keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))  # positions in order of first appearance
    slots[which] = rank[inverse.ravel()]
    return which[np.sort(first)], slots


def assemble(
    out: np.ndarray,
    keys: np.ndarray,
    store: Store,
    computed: np.ndarray,
    slots: np.ndarray,
    extras: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Fill ``out`` in order from ``computed`` and the store; return its index.

    ``slots``: for each row, its row in ``computed`` (``first_of_each``), or -1 to copy it from
    the store. ``extras`` (rows of bytes stored with each row, e.g. split's notes) go into the
    index. Written chunk by chunk, each chunk's pages (and those read from ``computed`` and the
    store) released, so memory stays flat however large ``out`` is.
    A reused row keeps its verified index entry (same key, row and extras: the same check);
    only new rows are hashed.
    """
    width = INDEX_WIDTH + (0 if extras is None else extras.shape[1])
    index = np.zeros((len(keys), width), dtype=np.uint8)
    for lo in range(0, len(keys), chunk):
        hi = min(lo + chunk, len(keys))
        block = np.empty((hi - lo, *out.shape[1:]), dtype=out.dtype)
        new = np.flatnonzero(slots[lo:hi] >= 0)
        old = np.flatnonzero(slots[lo:hi] < 0)
        if len(new):
            block[new] = computed[slots[lo + new]]
        entries = index[lo:hi]  # a view: filled in place
        if len(old):
            store.copy_rows(keys[lo + old], block, old, entries)
        out[lo:hi] = block
        # A reused entry is kept when it is this row's (key, extras): then its check is too.
        differs = (entries[old, :KEY_BYTES] != keys[lo + old]).any(axis=1)
        if extras is not None:
            differs |= (entries[old, INDEX_WIDTH:] != extras[lo + old]).any(axis=1)
        fresh = np.concatenate([new, old[differs]])
        if len(fresh):
            entries[fresh] = index_rows(
                keys[lo + fresh], block[fresh], None if extras is None else extras[lo + fresh]
            )
        release_rows(out, lo, hi)
        if computed is not None:
            release_rows(computed, 0, len(computed))
        store.release()
    return index
