"""Atomic writes: every output appears whole or not at all.

A stage killed at any moment (Ctrl-C, SIGKILL, out of memory) leaves at most a hidden
``.tmp-*`` or ``.scratch-*`` file behind, never a truncated output that looks finished; the
next write of the same output removes such leftovers (and DVC deletes a stage's declared
outputs, directories included, before it runs the stage again).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import json
import mmap
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import PipelineError

# A write that fails for want of room: a full disk, a quota, a file-size limit (ulimit -f).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def remove_leftovers(directory: Path, prefix: str) -> None:
    """Delete files named ``prefix*`` in ``directory``: temporaries of a run that was killed."""
    for stale in directory.glob(glob.escape(prefix) + "*"):
        if stale.is_file() or stale.is_symlink():
            stale.unlink(missing_ok=True)


def size_text(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3)):,} kB"


def free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def no_room_error(path: Path, err: OSError, needed: int | None = None) -> PipelineError:
    """The one-line error for a write that found no room: the path, the space it needs (when
    known) and what is free there."""
    free = free_bytes(path.parent)
    need = f"it needs {size_text(needed)}" if needed else "it needs more room"
    have = f", {size_text(free)} are free there" if free is not None else ""
    return PipelineError(
        f"cannot write '{path}': {err.strerror or err} ({need}{have}). Nothing was left half-"
        "written and earlier outputs are as they were; free some space (or raise the file-size "
        "limit, ulimit -f) and run again."
    )


def check_room(directory: str | Path, needed: int, what: str) -> None:
    """Stop before writing anything when ``directory``'s file system lacks ``needed`` bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    free = free_bytes(directory)
    if free is not None and free < needed:
        raise PipelineError(
            f"not enough space in '{directory}' for {what}: it needs {size_text(needed)}, "
            f"{size_text(free)} are free there. Nothing was written; free some space (or move "
            "the repository to a larger disk) and run again."
        )


def preallocate(path: Path, size: int) -> None:
    """Reserve ``size`` bytes for ``path`` now, so that a full disk is an OSError here and not
    a crash (SIGBUS) when a memory-mapped page is first written."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            f.seek(max(size - 1, 0))  # no fallocate there: write the last byte instead
            f.write(b"\0")


def open_npy_memmap(path: str | Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A writable memory-mapped .npy of ``shape`` whose space is reserved on disk first."""
    path = Path(path)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize + 128  # the data and its header
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        size = array.offset + array.nbytes
        del array
        preallocate(path, size)
    except OSError as err:
        err.needed = size  # for no_room_error, wherever it is reported
        raise
    return np.lib.format.open_memmap(path, mode="r+")


@contextlib.contextmanager
def temporary_file(directory: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    """Yield a new empty file ``directory/<prefix><random><suffix>``, deleted afterwards
    whatever happens (its mode is the usual one for new files).

    The name is fixed before the file exists, inside the ``try``: a Ctrl-C at any moment comes
    either before the file exists or before the ``finally`` that deletes it. (A file from
    ``tempfile.mkstemp`` can outlive a Ctrl-C that arrives just as it returns.)
    """
    tmp = None
    try:
        while tmp is None:
            tmp = directory / f"{prefix}{secrets.token_hex(8)}{suffix}"
            try:
                with open(tmp, "xb"):
                    pass
            except FileExistsError:
                tmp = None  # another file's name: never ours to delete
        yield tmp
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Temporaries of ``path`` left by an earlier, killed run are removed first. ``sync``: wait
    until the file's bytes are on the disk before the rename. The temporary keeps ``path``'s
    suffixes, for libraries that dispatch on them (Keras, NumPy).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, f".tmp-{path.name}.")
    suffix = "".join(path.suffixes)
    with temporary_file(path.parent, f".tmp-{path.name}.", suffix) as tmp_path:
        try:
            yield tmp_path
            if sync:
                with open(tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except OSError as err:
            if err.errno in NO_ROOM:
                raise no_room_error(path, err, getattr(err, "needed", None)) from None
            raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows (the header first) as CSV text, with ``\n`` line ends on every platform."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[Sequence[Any]]) -> None:
    """Rows (the header first) written atomically as CSV."""
    write_text(path, csv_text(rows))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Load a .npy array; object arrays (pickles, which can run code) are refused."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


# The zip timestamp (the earliest a zip can hold) and the ``date_saved`` written into every model.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_DATE_SAVED = "1980-01-01@00:00:00"


def _renumber_shared_objects(config: Any, ids: dict[int, int]) -> Any:
    """``config`` with every ``shared_object_id`` replaced by 1, 2, ... in order of appearance."""
    if isinstance(config, list):
        return [_renumber_shared_objects(item, ids) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: _renumber_shared_objects(value, ids) for key, value in config.items()}
    if "shared_object_id" in out:
        out["shared_object_id"] = ids.setdefault(out["shared_object_id"], len(ids) + 1)
    return out


def save_model(model: Any, path: str | Path) -> None:
    """Save a Keras model as ``.keras``, atomically and byte-identical for the same model.

    Keras writes the save time into the archive (``metadata.json``'s ``date_saved`` and the
    weights entry's zip timestamp) and the memory address of each object that layers share
    (``shared_object_id`` in ``config.json``), so every save of the same weights would get a
    new md5: DVC would record a "changed" model and push it again. The archive is rewritten with
    entries sorted by name, the zip epoch as every timestamp, ``date_saved`` set to that epoch
    and the shared-object ids numbered 1, 2, ... in order of appearance (they only pair up
    references within the file); the weights are untouched, and Keras loads it as usual.
    """
    with atomic_path(path) as final, scratch_path(Path(path).parent, ".keras") as raw:
        model.save(raw)
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(final, "w") as dst:
            for name in sorted(src.namelist()):
                data = src.read(name)
                if name == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = FIXED_DATE_SAVED
                    data = json.dumps(metadata).encode("utf-8")
                elif name == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
                info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
                info.compress_type = src.getinfo(name).compress_type
                info.external_attr = 0o644 << 16
                dst.writestr(info, data)


class RowWriter:
    """The rows of a .npy file, written in order: ``out[lo:hi] = rows`` where ``lo`` is the row
    the previous block ended at (what ``npy_writer`` yields).

    Plain sequential writes, not stores into a memory map: on a fresh file every first touch of
    a mapped page is a fault, which made writing a stage's arrays several times slower than
    the page cache allows. Nothing written stays in the process's memory.
    """

    def __init__(self, file: Any, shape: tuple[int, ...], dtype: Any) -> None:
        self.file, self.shape, self.dtype = file, tuple(shape), np.dtype(dtype)
        self.written = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, where: slice, rows: np.ndarray) -> None:
        start, stop, step = where.indices(self.shape[0])
        if step != 1 or start != self.written:
            raise ValueError(
                f"rows must be written in order: row {self.written} is next, not {start}"
            )
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        if block.shape != (stop - start, *self.shape[1:]):
            raise ValueError(
                f"rows {start}:{stop} of {self.shape} cannot take a block of {block.shape}"
            )
        self.file.write(block.data)
        self.written = stop


@contextlib.contextmanager
def npy_writer(path: str | Path, shape: tuple[int, ...], dtype: Any) -> Iterator[RowWriter]:
    """Yield a ``RowWriter`` of a .npy of ``shape``, filled block by block, renamed at the end
    only if every row was written.

    Memory stays flat however many rows are written. The file's space is reserved first: a full
    disk ends the run with a message before any work. The bytes are those of ``np.save``.
    The rename does not wait for the bytes to reach the disk: these arrays run to gigabytes,
    DVC copies each one into its cache as soon as the stage ends (without waiting either), and
    the kernel writes them out while the next stage starts.
    """
    dtype = np.dtype(dtype)
    header = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(header, {**fields, "shape": tuple(shape)})
    size = header.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with atomic_path(path, sync=False) as tmp:
        try:
            preallocate(tmp, size)
        except OSError as err:
            err.needed = size  # for no_room_error
            raise
        with open(tmp, "r+b") as f:
            f.write(header.getvalue())
            out = RowWriter(f, shape, dtype)
            yield out
        if out.written != out.shape[0]:
            raise RuntimeError(f"wrote {out.written} of the {out.shape[0]} rows of '{path}'")


@contextlib.contextmanager
def scratch_path(directory: str | Path, suffix: str) -> Iterator[Path]:
    """Yield a temporary file path in ``directory``, deleted afterwards whatever happens.

    Scratch files of an earlier, killed run in ``directory`` are removed first.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    remove_leftovers(Path(directory), ".scratch-")
    with temporary_file(Path(directory), ".scratch-", suffix) as tmp:
        try:
            yield tmp
        except OSError as err:
            if err.errno in NO_ROOM:
                raise no_room_error(tmp, err, getattr(err, "needed", None)) from None
            raise


def release_rows(array: np.ndarray, lo: int, hi: int) -> None:
    """Let the OS take back the pages holding rows [lo, hi) of a memory-mapped array.

    Data is not lost: the pages stay in the page cache (dirty ones are written to the file
    later) and are read back if touched again. This is what keeps the resident memory flat
    while a stage walks through an array larger than memory. Does nothing for an in-memory
    array or where ``madvise`` is missing.
    """
    if not hasattr(mmap, "MADV_DONTNEED") or not isinstance(
        getattr(array, "base", None), mmap.mmap
    ):
        return
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    # np.memmap maps from the allocation boundary below the data offset.
    start = array.offset % mmap.ALLOCATIONGRANULARITY + lo * row_bytes
    end = array.offset % mmap.ALLOCATIONGRANULARITY + hi * row_bytes
    start -= start % mmap.PAGESIZE
    end -= end % mmap.PAGESIZE  # a partly covered last page stays
    if end > start:
        array.base.madvise(mmap.MADV_DONTNEED, start, end - start)
