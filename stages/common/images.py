"""Image decoding and model-input preprocessing, shared by split, extract, evaluate and predict.

Two functions carry the contract between training and prediction:

* ``decode_image(path, prep)``: any supported file -> ``uint8`` RGB array ``(size, size, 3)``,
  by ``prepare_image(img, prep)`` after decoding: crop, normalise and fit as ``ImagePrep`` says.
* ``to_model_input(batch)``: ``uint8`` RGB batch -> what ResNet50 expects (its own
  ``preprocess_input``: RGB->BGR, ImageNet mean subtracted).

Pillow decodes (not ``keras.utils.load_img``) because it lets us refuse decompression bombs,
apply EXIF orientation and handle 16-bit and CMYK files explicitly, and because split and
predict then need no TensorFlow import.
"""

from __future__ import annotations

import math
import os
import stat
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageFilter, ImageOps

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
T = TypeVar("T")
# Refuse anything above this many pixels before decoding it (a 50-megapixel photo is fine).
MAX_PIXELS = 64_000_000

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


class ImageError(PipelineError):
    """One file could not be used as an image; the message names the file and the reason.

    ``reason`` is the SKIP_REASONS key under which the split stage counts the file.
    """

    def __init__(self, message: str, reason: str = "unreadable_image") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason when sent back from a decoding worker process
        return type(self), (str(self), self.reason)


def _scale_to_uint8(array: np.ndarray, top: float) -> Image.Image:
    """Map 0..top linearly onto 0..255 (rounding, clipping) as an 8-bit grayscale image."""
    scaled = np.clip(array.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _gray_range(img: Image.Image, array: np.ndarray) -> float:
    """The white level of a 16/32-bit integer or float grayscale image.

    16-bit modes (I;16*): 65535. 32-bit integers (I): 255 if every value fits 8 bits, 65535 if
    they fit 16 bits (how PNG, TIFF and PGM store them), else the image's own maximum. Floats
    (F): 1.0 if every value lies in [0, 1], else the image's own maximum.
    """
    if img.mode.startswith("I;16"):
        return 65535.0
    peak = float(array.max()) if array.size else 0.0
    if img.mode == "F":
        return 1.0 if peak <= 1.0 else peak
    if peak <= 255:
        return 255.0
    return 65535.0 if peak <= 65535 else peak


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, the way a person would expect it to look.

    * transparency (RGBA, LA, PA, palette or grayscale/RGB with a transparent colour) is
      composited onto white, since handwriting is dark ink on light paper;
    * 16/32-bit integer and float grayscale (I;16, I, F) is scaled linearly to 0-255, white
      level as in ``_gray_range`` (a 16-bit image spanning 0..65535 comes out spanning 0..255);
    * 16-bit-per-channel RGB(A) is already reduced to 8 bits by Pillow when it opens the file;
    * CMYK, YCbCr, LAB, HSV, 1-bit and palette images go through Pillow's own conversion.
    """
    if "transparency" in img.info and img.mode in ("P", "L", "RGB", "1"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        array = np.asarray(img)
        return _scale_to_uint8(array, _gray_range(img, array)).convert("RGB")
    return img.convert("RGB")


# Notes about an image that was used anyway: key counted in data/split/report.json -> meaning.
NOTES: dict[str, str] = {
    "no_ink_found": "data.crop is ink but no ink stands out from the page (a blank or very faint "
    "image); used uncropped",
}
ANALYSIS_SIDE = 512  # crop and normalise work on a copy at least this large (long side)
MIN_INK_CONTRAST = 32.0  # ink must be this many grey levels darker than the page around it
INK_FRACTION = 0.35  # a pixel is ink when darker than the page by this fraction of the darkest ink
PAPER_PERCENTILE = 90  # the page's level in each cell of the background grid
DRAFT_FACTOR = 4  # with crop: ink, JPEGs are decoded at >= 4x the output size (the crop is smaller)


@dataclass(frozen=True)
class ImagePrep:
    """How a decoded image becomes model input: the ``data.*`` image params, one object.

    Split builds it from params.yaml and writes ``as_dict()`` to ``data/split/prep.json``;
    predict (and anything else that classifies a new image) builds it from that file, so a new
    image goes through exactly what the training images went through. The steps, in order,
    after EXIF orientation: ``crop`` (``ink``: to the dark foreground found against the page's
    own background, plus ``crop_margin``), ``normalise`` (``contrast``: stretch each channel
    linearly from its 1st to its 95th percentile, ``_stretch``; ``illumination``: divide each channel by the page's
    estimated background first, which removes light gradients and paper colour), ``fit`` to a
    square (``pad`` with the page colour, ``center_crop``, ``stretch``), resize to ``image_size``.
    ``fit: stretch, crop: none, normalise: none`` is the pipeline's behaviour before these params.
    """

    image_size: int = 64
    fit: str = "pad"
    crop: str = "ink"
    crop_margin: float = 0.15
    normalise: str = "illumination"

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> ImagePrep:
        """From params.yaml's ``data`` section, or a ``prep.json`` written by ``as_dict``."""
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise PipelineError(
                f"image preparation settings lack {missing} (have {sorted(data)}): re-run "
                "`dvc repro split` so that data/split/prep.json is written by this version."
            )
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def draft_size(self) -> int:
        """The least side a JPEG may be draft-decoded to and still give a sharp result."""
        return self.image_size * (DRAFT_FACTOR if self.crop == "ink" else 1)


def _paper_grid(channel: np.ndarray) -> np.ndarray:
    """The page's level on a coarse grid: a high percentile per cell, then a 3x3 median.

    A cell mostly covered by ink is an outlier among its neighbours, and the median drops it;
    a light gradient across the page is kept. (The last rows and columns that do not fill a
    cell are left out of the estimate.)
    """
    h, w = channel.shape
    count = int(np.clip(min(h, w) // 24, 1, 8))
    stride = max(1, min(h, w) // 128)  # every pixel is not needed for a percentile
    channel = channel[::stride, ::stride]
    h, w = channel.shape
    ch, cw = h // count, w // count
    cells = channel[: ch * count, : cw * count].reshape(count, ch, count, cw).swapaxes(1, 2)
    grid = np.percentile(cells.reshape(count, count, ch * cw), PAPER_PERCENTILE, axis=-1)
    padded = np.pad(grid, 1, mode="edge")
    shifted = [padded[i : i + count, j : j + count] for i in range(3) for j in range(3)]
    return np.median(shifted, axis=0).astype(np.float32)


def background(channel: np.ndarray) -> np.ndarray:
    """The estimated page (paper) level under every pixel of a 2-D float array.

    ``_paper_grid`` smoothly (bilinearly) interpolated back to the array's shape, so a light
    gradient across the page is followed while ink, much smaller than a cell, is not.
    """
    h, w = channel.shape
    plane = Image.fromarray(_paper_grid(channel), mode="F")
    return np.asarray(plane.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def ink_box(gray: np.ndarray, margin: float, square: bool) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) around the ink of a 2-D array, or None if there is none.

    Ink is what is darker than the page's own background estimate by at least
    ``INK_FRACTION`` of the darkest ink and by ``MIN_INK_CONTRAST`` grey levels; isolated
    pixels (noise) are dropped by a 3x3 median. The box grows by ``margin`` times its longer
    side on every side (and to a square around its centre with ``square``), clipped to the image.
    """
    h, w = gray.shape
    darker = np.clip(background(gray) - gray, 0, None)
    peak = float(np.percentile(darker, 99.9)) if min(h, w) >= 32 else float(darker.max())
    if peak < MIN_INK_CONTRAST:
        return None
    mask = darker > max(INK_FRACTION * peak, MIN_INK_CONTRAST / 2)
    if min(h, w) >= 48:
        filtered = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(3))
        mask = np.asarray(filtered) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    grow = margin * max(bottom - top, right - left)
    half_w, half_h = (right - left) / 2 + grow, (bottom - top) / 2 + grow
    if square:
        half_w = half_h = max(half_w, half_h)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return (
        max(0, math.floor(cx - half_w)),
        max(0, math.floor(cy - half_h)),
        min(w, math.ceil(cx + half_w)),
        min(h, math.ceil(cy + half_h)),
    )


def _stretch(array: np.ndarray) -> np.ndarray:
    """Each channel of (h, w, 3) floats linearly from its 1st..95th percentile to 0..255.

    For a page with ink the 95th percentile is the paper (made white), the 1st the ink.
    """
    lo, hi = np.percentile(array.reshape(-1, 3), [1, 95], axis=0)
    flat = hi - lo < 1.0  # a flat channel keeps its level
    lo = np.where(flat, 0.0, lo)
    scale = np.where(flat, 1.0, 255.0 / np.maximum(hi - lo, 1.0))
    return np.clip((array - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def _reduce(rgb: Image.Image, side: int) -> Image.Image:
    """``rgb`` shrunk (aspect kept) so that its longer side is at most ``side``."""
    scale = side / max(rgb.size)
    if scale >= 1:
        return rgb
    return rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))


def _border_colour(rgb: Image.Image) -> tuple[int, ...]:
    """The median colour of the outermost pixels: the page, for padding."""
    array = np.asarray(rgb)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def fit_square(rgb: Image.Image, fit: str, size: int) -> Image.Image:
    """``rgb`` made square by ``fit`` and resized to ``size`` (bilinear, antialiased)."""
    w, h = rgb.size
    if fit == "center_crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    elif fit == "pad" and w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), _border_colour(rgb))
        square.paste(rgb, ((side - w) // 2, (side - h) // 2))
        rgb = square
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return rgb


def prepare_image(img: Image.Image, prep: ImagePrep, notes: list[str] | None = None) -> np.ndarray:
    """Turn an (upright) Pillow image of any mode into the model's ``(size, size, 3)`` uint8 input.

    The one function that does this, for training images (split) and new ones (predict): crop
    to the ink, normalise, fit to a square, resize, as ``prep`` says (see ``ImagePrep``). The
    crop and normalisation work on a copy at most ``max(ANALYSIS_SIDE, 4 * image_size)`` on
    its long side. A NOTES key is appended to ``notes`` when a step could not apply (a blank
    page: no ink found, the image is used uncropped).
    """
    rgb = _to_rgb(img)
    if prep.crop == "none" and prep.normalise == "none":
        return np.asarray(fit_square(rgb, prep.fit, prep.image_size), dtype=np.uint8)
    array = np.asarray(_reduce(rgb, max(ANALYSIS_SIDE, prep.draft_size)), dtype=np.float32)
    box = None
    if prep.crop == "ink":
        gray = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        box = ink_box(gray, prep.crop_margin, square=prep.fit == "pad")
        if box is None and notes is not None:
            notes.append("no_ink_found")
    if prep.normalise == "illumination":
        page = np.stack([background(array[..., c]) for c in range(3)], axis=-1)
        array = array / np.maximum(page, 1.0) * 255.0
    if box is not None:
        left, top, right, bottom = box
        array = array[top:bottom, left:right]
    if prep.normalise == "none":
        pixels = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    else:
        pixels = _stretch(array)
    return np.asarray(
        fit_square(Image.fromarray(pixels, mode="RGB"), prep.fit, prep.image_size), dtype=np.uint8
    )


def _open_checked(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only) and refuse it if it has too many pixels."""
    if not path.is_file():
        raise ImageError(
            f"{path}: file not found or not a regular file (a broken symlink, folder or pipe). "
            "Replace it with the image file or delete it.",
            "not_a_regular_file",
        )
    if path.stat().st_size == 0:
        raise ImageError(
            f"{path}: empty file (0 bytes). Delete it or replace it with an image.", "empty_file"
        )
    img = Image.open(path)
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise ImageError(
            f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} this pipeline "
            "decodes. Downscale it (any side of a few hundred pixels is plenty).",
            "too_large",
        )
    return img


def _decode(path: str | Path, draft_side: int, convert: Callable[[Image.Image], T]) -> T:
    """Open ``path`` safely, draft-decode at >= ``draft_side``, upright it, ``convert`` it."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_checked(path) as img:
                img.draft("RGB", (draft_side, draft_side))  # JPEG: decode at reduced scale
                return convert(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"{path}: refused as a possible decompression bomb ({err}). Downscale it.", "too_large"
        ) from None
    except MemoryError:
        raise
    # Pillow reports damaged files with many exception types (OSError, SyntaxError, EOFError,
    # struct.error, ...); each one means this file, not the run, is broken.
    except Exception as err:
        raise ImageError(
            f"{path}: not a readable image ({type(err).__name__}: {err}). "
            "Delete it, re-export it, or move it out of the folder."
        ) from None


def decode_image(path: str | Path, prep: ImagePrep, notes: list[str] | None = None) -> np.ndarray:
    """Decode one image file to the model's ``(size, size, 3)`` uint8 RGB input.

    The size is checked from the header before any pixel is decoded. JPEGs are decoded at a
    reduced scale still large enough for ``prep`` (draft mode, several times faster), EXIF
    orientation is applied, then ``prepare_image`` does the rest. Animated and multi-page
    files give their first frame. Raises ImageError naming the file for anything that is not
    a usable image.
    """
    return _decode(path, prep.draft_size, lambda img: prepare_image(img, prep, notes))


def thumbnail(img: Image.Image, side: int) -> np.ndarray:
    """The whole (upright) image, aspect kept, in a ``side`` square on black: uint8 RGB."""
    rgb = _to_rgb(img)
    scale = side / max(rgb.size)
    # Small scans are enlarged pixel by pixel (as they are); photos shrunk smoothly.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    rgb = rgb.resize(size, resample)
    square = Image.new("RGB", (side, side), (0, 0, 0))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return np.asarray(square, dtype=np.uint8)


def decode_thumbnail(path: str | Path, side: int) -> np.ndarray:
    """``thumbnail`` of an image file, for showing the original beside what the model saw."""
    return _decode(path, side, lambda img: thumbnail(img, side))


def to_model_input(batch):
    """Turn a uint8 RGB batch ``(n, h, w, 3)`` into ResNet50's input: ``preprocess_input``.

    The one preprocessing function used for training features (inside extract's compiled
    forward pass, on tensors), evaluation and prediction (on numpy arrays).
    """
    from keras import ops
    from keras.applications.resnet50 import preprocess_input

    if len(batch.shape) != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a batch of RGB images (n, h, w, 3), got shape {batch.shape}")
    return preprocess_input(ops.cast(batch, "float32"))


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
    if _leaves_root(entry, real_root):
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
