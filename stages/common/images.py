"""Image decoding and model-input preprocessing, shared by split, extract, evaluate and predict.

Two functions carry the contract between training and prediction:

* ``decode_image(path, size)``: any supported file -> ``uint8`` RGB array ``(size, size, 3)``.
* ``to_model_input(batch)``: ``uint8`` RGB batch -> what ResNet50 expects (its own
  ``preprocess_input``: RGB->BGR, ImageNet mean subtracted).

Pillow decodes (not ``keras.utils.load_img``) because it lets us refuse decompression bombs,
apply EXIF orientation and handle 16-bit and CMYK files explicitly, and because split and
predict then need no TensorFlow import.
"""

from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from stages.common.errors import PipelineError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Files that operating systems and tools leave in folders: skipped and counted, never an error.
STRAY_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
# Refuse anything above this many pixels before decoding it (a 50-megapixel photo is fine).
MAX_PIXELS = 64_000_000


class ImageError(PipelineError):
    """One file could not be used as an image; the message names the file and the reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, the way a person would expect it to look.

    * transparency (RGBA, LA, palette with transparency) is composited onto white, since
      handwriting is dark ink on light paper;
    * 16/32-bit grayscale (I;16, I) is scaled from its own full range to 0-255;
    * CMYK, YCbCr, 1-bit and palette images go through Pillow's own conversion.
    """
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if img.mode == "F":
            top = max(float(array.max()), 1e-12)
        scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return img.convert("RGB")


def image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """Convert a Pillow image of any mode to a ``(size, size, 3)`` uint8 RGB array (bilinear)."""
    rgb = _to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file to a ``(size, size, 3)`` uint8 RGB array.

    EXIF orientation is applied, the image is stretched to a square (as Keras'
    ``image_dataset_from_directory`` does) with bilinear filtering. Raises ImageError naming the
    file for anything that is not a usable image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(
                f"{path}: empty file (0 bytes). Delete it or replace it with an image."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} this "
                        "pipeline decodes. Downscale it (any side of a few hundred pixels is plenty)."
                    )
                img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
                return image_to_array(ImageOps.exif_transpose(img), size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({err}).") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(
            f"{path}: not a readable image ({type(err).__name__}: {err}). "
            "Delete it, re-export it, or move it out of the folder."
        ) from None


def to_model_input(batch: np.ndarray) -> np.ndarray:
    """Turn a uint8 RGB batch ``(n, h, w, 3)`` into ResNet50's input: ``preprocess_input``.

    The one preprocessing function used for training features, evaluation and prediction.
    """
    from keras.applications.resnet50 import preprocess_input

    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a batch of RGB images (n, h, w, 3), got shape {batch.shape}")
    return preprocess_input(batch.astype(np.float32))


@dataclass
class FolderScan:
    """What was found under a ``<class>/<image>`` folder."""

    classes: list[str]
    files: list[tuple[Path, int]]  # (path, class index), sorted by class then file name
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> relative paths

    def skip(self, reason: str, relpath: str) -> None:
        self.skipped.setdefault(reason, []).append(relpath)


def _is_stray(name: str) -> bool:
    return name.startswith(".") or name.lower() in STRAY_NAMES


def class_name(folder: Path) -> str:
    """The class name of a folder, in Unicode NFC so macOS and Linux spell Korean the same."""
    return unicodedata.normalize("NFC", folder.name)


def scan_folder(root: str | Path) -> FolderScan:
    """List the images of a ``<class>/<image>`` folder without decoding them.

    Classes are the sub-folders, sorted by name. Stray files (hidden files, .DS_Store,
    Thumbs.db, desktop.ini), files with other extensions, files directly under the root,
    nested sub-folders and symlinks leading outside the root are skipped and reported.
    """
    root = Path(root)
    if not root.exists():
        raise PipelineError(
            f"data.folder '{root}' does not exist. Create it with one sub-folder per class "
            "(e.g. data/raw/0/img1.png) or set data.source: digits."
        )
    if not root.is_dir():
        raise PipelineError(f"data.folder '{root}' is a file, not a folder of class sub-folders.")
    real_root = root.resolve()
    scan = FolderScan(classes=[], files=[])
    entries = sorted(root.iterdir(), key=lambda p: class_name(p))
    class_dirs = []
    for entry in entries:
        rel = entry.name
        if _is_stray(entry.name):
            scan.skip("hidden or system file", rel)
        elif entry.is_dir() and not entry.resolve().is_relative_to(real_root):
            scan.skip("symlink leading outside the folder", rel)
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            scan.skip("file directly under the root (not in a class folder)", rel)
    for index, class_dir in enumerate(class_dirs):
        scan.classes.append(class_name(class_dir))
        for entry in sorted(class_dir.iterdir(), key=lambda p: p.name):
            rel = f"{class_dir.name}/{entry.name}"
            if _is_stray(entry.name):
                scan.skip("hidden or system file", rel)
            elif not entry.resolve().is_relative_to(real_root):
                scan.skip("symlink leading outside the folder", rel)
            elif entry.is_dir():
                scan.skip("nested sub-folder (only <class>/<image> is read)", rel)
            elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
                scan.skip(f"not an image extension {list(IMAGE_EXTENSIONS)}", rel)
            else:
                scan.files.append((entry, index))
    return scan
