"""Scratch copies of the project: what the tests and the benchmarks run ``dvc repro`` in.

One copy is the working tree's project files (tracked, plus untracked files git does not
ignore; no outputs, caches or virtual environment), committed into a fresh git repository so
that DVC can run there without touching this checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def project_files(root: Path = REPO_ROOT) -> list[str]:
    """Tracked plus untracked-but-not-ignored files of ``root``'s working tree, relative."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({p for p in out.decode("utf-8").split("\0") if p})


def copy_project(
    dest: Path, root: Path = REPO_ROOT, keep: Callable[[str], bool] = lambda rel: True
) -> Path:
    """Copy the project's files (those ``keep`` accepts) from ``root`` into ``dest``.

    Files deleted in the working tree but still tracked are skipped; symlinks stay symlinks.
    """
    for rel in project_files(root):
        src = root / rel
        if (src.is_file() or src.is_symlink()) and keep(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    return dest


def git_commit(repo: Path, message: str, *, init: bool = False, name: str = "scratch") -> None:
    """``git init`` (optionally), ``git add -A`` and commit everything in ``repo``."""
    ident = ["-c", f"user.name={name}", "-c", f"user.email={name}@example.invalid"]
    commands = [["git", "init", "-q"]] if init else []
    commands += [
        ["git", "add", "-A"],
        ["git", *ident, "commit", "-q", "--allow-empty", "-m", message],
    ]
    for command in commands:
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
