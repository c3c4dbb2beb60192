"""Page preparation: how a decoded image becomes the model's input, shared by split, export,
predict and serve.

Two functions carry the contract between training and prediction:

* ``decode_image(path, prep)``: any supported file -> ``uint8`` RGB array ``(size, size, 3)``,
  by ``prepare_image(img, prep)`` after decoding (``stages/common/decode.py``): crop,
  normalise and fit as ``ImagePrep`` says;
* ``prepare_image(img, prep)``: the same from an image already decoded.

What ResNet50 takes from these uint8 images is ``to_model_input`` (``stages/common/resnet50.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from stages.common.decode import decode_file, to_rgb
from stages.common.errors import PipelineError

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
    rgb = to_rgb(img)
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


def decode_image(path: str | Path, prep: ImagePrep, notes: list[str] | None = None) -> np.ndarray:
    """Decode one image file to the model's ``(size, size, 3)`` uint8 RGB input.

    The size is checked from the header before any pixel is decoded. JPEGs are decoded at a
    reduced scale still large enough for ``prep`` (draft mode, several times faster), EXIF
    orientation is applied, then ``prepare_image`` does the rest. Animated and multi-page
    files give their first frame. Raises ImageError naming the file for anything that is not
    a usable image.
    """
    return decode_file(path, prep.draft_size, lambda img: prepare_image(img, prep, notes))
