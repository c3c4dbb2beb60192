"""Shared fixtures: a throw-away git+DVC copy of this repository with tiny params, and helpers.

API (small on purpose):

* ``REPO_ROOT``: the repository these tests belong to.
* ``TINY_PARAMS``: dotted-key overrides that make ``dvc repro`` take well under a minute.
* ``run(cmd, cwd, check=True, timeout=900)``: run a command with this venv's ``bin`` first on
  PATH; on a non-zero exit (with ``check``) the test fails showing the command's output.
* ``write_params(repo, overrides)``: apply ``{"train.epochs": 3, ...}`` to ``repo/params.yaml``
  (from ``tools.scratch``, as are ``command_env`` and ``scratch_repo``).
* ``write_images(folder, counts, size=16)``: write ``<class>/<i>.png`` test images.
* ``git_status(repo)``: ``git status --porcelain`` ("" when the working tree is clean).
* ``snapshot(folder)``: every file's bytes and mtime, to show a folder was left untouched.
* ``png_bytes(width, height, depth, color, rows)``: a hand-made PNG (any bit depth, or a header
  that claims any size with ``rows=None``); ``scanlines(array)`` makes its rows.
* ``copy_project(dest)`` and ``git_commit(repo, message, init=False)`` (from ``tools.scratch``):
  the fixture's parts.
* fixture ``pipeline_repo``: a committed git repository in ``tmp_path / "repo"`` holding the
  working-tree files of this repository (tracked and untracked-but-not-ignored, as they are now),
  with ``TINY_PARAMS`` applied. DVC outputs and caches are not copied, so nothing is shared with
  the real checkout.
* fixture ``shipped_repo`` (session): such a repository after ``dvc repro export evaluate``: a
  tiny trained pipeline with its exported model, built once per test run (pytest-xdist workers
  share the build, each reading its own copy). Tests must not change it (copy it first:
  ``shutil.copytree(shipped_repo, dest, symlinks=True)``).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

from tools.scratch import (  # noqa: F401  (re-exported for the tests)
    command_env,
    copy_project,
    git_commit,
    scratch_repo,
    write_params,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_PARAMS: dict[str, Any] = {
    "data.source": "digits",
    "data.image_size": 32,
    "data.max_per_class": 12,
    "augment.copies": 1,
    "extract.weights": "random",
    "extract.layer": "conv4_block6_out",
    "train.epochs": 3,
    "evaluate.grid_size": 20,
}


# The files that take minutes, longest first (`pytest --durations`, two workers). With
# pytest-xdist's `--dist loadfile --no-loadscope-reorder` (make test) the workers take files in
# this order, then the rest as collected, so no long file starts last while the other worker
# has run out of files. test_export.py comes before test_serve.py: it builds ``shipped_repo``,
# which test_serve.py then only copies.
SLOW_FILES_FIRST = (
    "test_pipeline_e2e.py",
    "test_share_e2e.py",
    "test_faults.py",
    "test_export.py",
    "test_extract.py",
    "test_photos_e2e.py",
    "test_serve.py",
    "test_hostile.py",
    "test_growing.py",
    "test_reproducibility.py",
    "test_ray_engine.py",
    "test_graph_prep.py",
    "test_weights.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C at its default in this process, so in every command the tests start.

    A shell starts a background job (``cmd &`` in a script, ``nohup``, some CI runners) with
    SIGINT ignored, and a process inherits that through ``exec``: a server the tests start
    would ignore the Ctrl-C that ``Server.stop()`` sends, as a person at a terminal would, and
    be killed after a minute. Which tests failed then depended on whether an earlier test in the
    same xdist worker had set a handler of its own (a handler, unlike "ignored", is reset on
    ``exec``). Runs in the main process and in each worker.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run ``SLOW_FILES_FIRST`` first, in that order; each file's tests keep their order."""
    missing = [name for name in SLOW_FILES_FIRST if not (Path(__file__).parent / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES_FIRST names no such file: {missing}")
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run(
    cmd: Sequence[str] | str,
    cwd: str | Path,
    *,
    check: bool = True,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (a list, or a string split on whitespace) in ``cwd``; return its result.

    stdout and stderr are captured as text. With ``check`` a non-zero exit fails the test and
    shows both streams.
    """
    args = cmd.split() if isinstance(cmd, str) else list(cmd)
    result = subprocess.run(
        args,
        cwd=cwd,
        env=command_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {result.returncode} in {cwd}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result


def git_status(repo: str | Path) -> str:
    """``git status --porcelain`` of ``repo``: "" when nothing differs from HEAD."""
    return run(["git", "status", "--porcelain"], repo).stdout


def write_images(folder: str | Path, counts: Mapping[str, int], size: int = 16) -> list[Path]:
    """Write ``counts[class]`` distinct small RGB PNGs under ``folder/<class>/``; return paths.

    Each class gets its own colour and each image its own pattern, so classes are learnable and
    no two files are identical.
    """
    paths = []
    for c, (name, n) in enumerate(counts.items()):
        class_dir = Path(folder) / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.full((size, size, 3), 40 + 50 * (c % 4), dtype=np.uint8)
            pixels[..., c % 3] = 220
            pixels[i % size, :, :] = 0
            pixels[:, (3 * i) % size, :] = 255
            path = class_dir / f"img_{i:03d}.png"
            Image.fromarray(pixels, mode="RGB").save(path)
            paths.append(path)
    return paths


@pytest.fixture
def pipeline_repo(tmp_path: Path) -> Path:
    """A committed git+DVC copy of the project in ``tmp_path / "repo"`` with ``TINY_PARAMS``."""
    return scratch_repo(tmp_path / "repo", TINY_PARAMS)


def build_shipped_repo(dest: Path) -> Path:
    """A scratch repository in ``dest`` with ``TINY_PARAMS``, after ``dvc repro export evaluate``."""
    repo = scratch_repo(dest, TINY_PARAMS)
    run(["dvc", "repro", "export", "evaluate"], repo)
    return repo


@pytest.fixture(scope="session")
def shipped_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline trained, exported and evaluated once per test run (read-only for tests).

    Under pytest-xdist the workers share one build: the first worker to need it builds it in the
    run's common temp folder (under a file lock; the others wait), and each worker then works on
    its own copy, so nothing a test runs in its copy (``dvc status`` writes ``.dvc/tmp``) is seen
    by another worker mid-copy. The shared build is only ever read, by ``copytree``.
    """
    own = tmp_path_factory.mktemp("shipped") / "repo"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_shipped_repo(own)
    shared = tmp_path_factory.getbasetemp().parent / "shipped_shared"
    built = shared.with_name(shared.name + ".built")
    with FileLock(str(shared) + ".lock"):
        if not built.exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker's build that failed halfway
            build_shipped_repo(shared)
            built.touch()
    shutil.copytree(shared, own, symlinks=True)
    return own


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (ns) under ``folder``, symlinks not followed."""
    return {
        str(p.relative_to(folder)): (
            p.read_bytes() if p.is_file() and not p.is_symlink() else b"",
            p.lstat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
    }


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, color: int, rows: bytes | None) -> bytes:
    """A PNG file; ``rows`` are the filtered scanlines (None: header only, no pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    data = png_chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + data + png_chunk(b"IEND", b"")


def scanlines(array: np.ndarray) -> bytes:
    """Unfiltered PNG scanlines of a (h, w[, c]) big-endian array."""
    return b"".join(b"\x00" + row.tobytes() for row in array)
