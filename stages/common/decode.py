"""Decoding image files safely, and converting any Pillow mode to 8-bit RGB.

Pillow decodes (not ``keras.utils.load_img``) because it lets us refuse decompression bombs,
apply EXIF orientation and handle 16-bit and CMYK files explicitly, and because split and
predict then need no TensorFlow import. Preparing a decoded page for the model is
``stages/common/prep.py``; listing a folder of images is ``stages/common/scan.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from stages.common.errors import PipelineError

T = TypeVar("T")
# Refuse anything above this many pixels before decoding it (a 50-megapixel photo is fine).
MAX_PIXELS = 64_000_000


class ImageError(PipelineError):
    """One file could not be used as an image; the message names the file and the reason.

    ``reason`` is the key (``SKIP_REASONS`` in ``stages/common/scan.py``) under which the split
    stage counts the file.
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


def to_rgb(img: Image.Image) -> Image.Image:
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


def decode_file(path: str | Path, draft_side: int, convert: Callable[[Image.Image], T]) -> T:
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


def thumbnail(img: Image.Image, side: int) -> np.ndarray:
    """The whole (upright) image, aspect kept, in a ``side`` square on black: uint8 RGB."""
    rgb = to_rgb(img)
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
    return decode_file(path, side, lambda img: thumbnail(img, side))
