"""Scratch copies of the project: what the tests and the benchmarks run ``dvc repro`` in.

One copy is the working tree's project files (tracked, plus untracked files git does not
ignore; no outputs, caches or virtual environment), committed into a fresh git repository so
that DVC can run there without touching this checkout. ``scratch_repo`` makes one with params
overrides; ``write_params`` changes its params later; ``command_env`` is the environment to run
``dvc`` and the stages in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from stages.common.paths import PARAMS_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for subprocesses: this venv's bin first on PATH, no DVC analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra or {})
    return env


STAGE_RUN = re.compile(r"Running stage '([\w-]+)'")  # what DVC prints for a stage it runs


def stages_run(output: str) -> list[str]:
    """The stages DVC says it ran, in order, from its own output."""
    return STAGE_RUN.findall(output)


def write_params(repo: str | Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"train.epochs"``) in ``repo/params.yaml``; return the whole params.

    A value of ``...`` (Ellipsis) deletes the key; unknown sections and keys are written as
    given, so tests can produce invalid files on purpose. Comments are not kept.
    """
    path = Path(repo) / PARAMS_FILE
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key:
            params[section] = value
            continue
        target = params.setdefault(section, {})
        if value is Ellipsis:
            target.pop(key, None)
        else:
            target[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return params


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


def scratch_repo(
    dest: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    root: Path = REPO_ROOT,
    keep: Callable[[str], bool] = lambda rel: True,
    name: str = "scratch",
) -> Path:
    """A committed git repository in ``dest`` holding the project's files with ``overrides``."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_project(dest, root, keep)
    if overrides:
        write_params(dest, overrides)
    git_commit(dest, "scratch copy of the project", init=True, name=name)
    return dest
