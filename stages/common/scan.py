"""Listing a ``<class>/<image>`` folder without decoding anything: which files are images of
which class, which are skipped and why (``SKIP_REASONS``), and what would stop DVC hashing it.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.decode import MAX_PIXELS
from stages.common.errors import PipelineError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Files and folders that operating systems and tools leave behind (lower case): skipped and
# counted, never an error. Names starting with "." are skipped too.
STRAY_NAMES = {
    ".ds_store",
    "thumbs.db",
    "ehthumbs.db",
    "desktop.ini",
    "icon\r",
    "__macosx",
    "$recycle.bin",
    "system volume information",
    "@eadir",
}

# Why a file was skipped: the key counted in data/split/report.json, and what the user can do.
SKIP_REASONS: dict[str, str] = {
    "hidden_or_system_file": "hidden or system file (.DS_Store, Thumbs.db, desktop.ini, "
    "__MACOSX, names starting with '.'); nothing to do",
    "other_extension": f"extension not one of {' '.join(IMAGE_EXTENSIONS)}; convert it "
    "(e.g. HEIC to JPEG) if it is an image you want",
    "outside_class_folder": "file directly under data.folder, not in a class sub-folder; move "
    "it into one",
    "nested_folder": "nested sub-folder (only <class>/<image> is read); move its images up "
    "into the class folder",
    "symlink_outside": "symlink leading outside data.folder; copy the files in instead",
    "not_a_regular_file": "broken symlink, pipe or device; replace it with a real file",
    "empty_file": "empty file (0 bytes); delete it or replace it with the image",
    "unreadable_image": "corrupt, truncated or not an image despite its extension; re-export "
    "it or delete it",
    "too_large": f"more than {MAX_PIXELS:,} pixels or a possible decompression bomb; downscale it",
    "undecodable_name": "file or folder name that is not UTF-8 (shown with \\x escapes); rename "
    "it in UTF-8, e.g. convmv -f latin1 -t utf-8 -r --notest DIR",
}


@dataclass
class FolderScan:
    """What was found under a ``<class>/<image>`` folder."""

    classes: list[str]
    files: list[tuple[Path, int]]  # (path, class index), sorted by class then file name
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> relative paths

    def skip(self, reason: str, relpath: str) -> None:
        self.skipped.setdefault(reason, []).append(relpath)


def is_stray(name: str) -> bool:
    """Hidden (dot) files and folders, and the ones operating systems leave behind."""
    return name.startswith(".") or name.lower() in STRAY_NAMES


def class_name(folder: Path) -> str:
    """The class name of a folder, in Unicode NFC so macOS and Linux spell Korean the same."""
    return unicodedata.normalize("NFC", folder.name)


def _list_dir(folder: Path) -> list[Path]:
    """The entries of ``folder`` sorted by their NFC name (the same order on every OS)."""
    try:
        return sorted(folder.iterdir(), key=class_name)
    except OSError as err:
        raise PipelineError(
            f"cannot list '{folder}' ({err.strerror or err}). Check that it exists and is readable."
        ) from None


def _check_root(root: Path) -> None:
    if not root.exists():
        raise PipelineError(
            f"data.folder '{root}' does not exist. Create it with one sub-folder per class "
            "(e.g. data/raw/cat/img1.jpg, data/raw/dog/img2.jpg) or set data.source: digits."
        )
    if not root.is_dir():
        raise PipelineError(
            f"data.folder '{root}' is a file, not a folder. Point data.folder at a folder holding "
            "one sub-folder per class."
        )


def _leaves_root(entry: Path, real_root: Path) -> bool:
    """True for a symlink (or a path through one) that resolves outside ``real_root``."""
    try:
        return not entry.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop: not a usable file either way
        return False


def shown_name(name: str) -> str:
    """``name`` as text that can be printed and written as UTF-8: bytes that are not UTF-8
    (which Python keeps as lone surrogates) shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8_name(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (DVC, JSON and CSV cannot hold it)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def special_file_kind(entry: Path) -> str | None:
    """'FIFO', 'socket', 'device' or 'dangling symlink' for an entry that is none of a file,
    a folder or a symlink to one (checked without opening it: opening a FIFO waits for ever)."""
    try:
        mode = entry.stat().st_mode
    except OSError:
        return "dangling symlink" if entry.is_symlink() else None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return None


def _entry_reason(entry: Path, real_root: Path) -> str | None:
    """Why an entry inside a class folder is skipped, or None for an image file to decode."""
    if not is_utf8_name(entry.name):
        return "undecodable_name"
    if is_stray(entry.name):
        return "hidden_or_system_file"
    # Its class folder is inside the root (scan_folder checked it): only a symlink can leave.
    if entry.is_symlink() and _leaves_root(entry, real_root):
        return "symlink_outside"
    if entry.is_dir():
        return "nested_folder"
    if not entry.is_file():
        return "not_a_regular_file"
    if entry.suffix.lower() not in IMAGE_EXTENSIONS:
        return "other_extension"
    return None


def scan_folder(root: str | Path) -> FolderScan:
    """List the images of a ``<class>/<image>`` folder without decoding (or writing) anything.

    Classes are the sub-folders, sorted by NFC name. Files with other extensions, hidden and
    system files, files directly under the root, nested sub-folders, broken symlinks, pipes,
    sockets and devices (told apart by ``stat``, never opened), names that are not UTF-8 and
    symlinks leading outside the root are skipped under a SKIP_REASONS key. Two folders whose
    names differ only in Unicode normalisation are an error (they would be one class).
    """
    root = Path(root)
    _check_root(root)
    real_root = root.resolve()
    scan = FolderScan(classes=[], files=[])
    class_dirs = []
    for entry in _list_dir(root):
        if not is_utf8_name(entry.name):
            scan.skip("undecodable_name", shown_name(entry.name))
        elif is_stray(entry.name):
            scan.skip("hidden_or_system_file", entry.name)
        elif _leaves_root(entry, real_root):
            scan.skip("symlink_outside", entry.name)
        elif entry.is_dir():
            class_dirs.append(entry)
        elif entry.is_file():
            scan.skip("outside_class_folder", entry.name)
        else:
            scan.skip("not_a_regular_file", entry.name)
    names = [class_name(d) for d in class_dirs]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise PipelineError(
            f"data.folder '{root}' has several class folders named {twins} (the same name in "
            "different Unicode normalisations, e.g. copied from macOS). Merge them into one."
        )
    for index, class_dir in enumerate(class_dirs):
        scan.classes.append(class_name(class_dir))
        for entry in _list_dir(class_dir):
            reason = _entry_reason(entry, real_root)
            if reason is None:
                scan.files.append((entry, index))
            else:
                scan.skip(reason, f"{class_dir.name}/{shown_name(entry.name)}")
    return scan


def unhashable_entries(root: str | Path) -> list[str]:
    """Entries under ``root`` that stop DVC before split runs (DVC hashes data.folder, a
    dependency, first): FIFOs (reading one waits for ever), sockets, devices, dangling
    symlinks, and names that are not UTF-8. Each as ``relative path (kind)``."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            relative = shown_name(str(entry.relative_to(root)))
            if not is_utf8_name(name):
                found.append(f"{relative} (name not UTF-8)")
            elif kind := special_file_kind(entry):
                found.append(f"{relative} ({kind})")
    return found
