"""The shipped model at run time: ``models/classifier.keras`` with its labels and preparation
settings (``load_bundle``), and the raw-image SavedModel with the decoder a client has
(``load_raw_classifier``, ``decode_photo``). What the model is and how the export stage builds
it: ``stages/common/classifier.py``.

predict decodes a file with ``decode_photo`` and classifies it with ``load_raw_classifier``
(the raw-image SavedModel), the code path a phone app or a web page has; serve runs
``classifier.keras`` on images prepared by ``decode_image``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import paths
from stages.common.classifier import in_models, keras, load_prep
from stages.common.decode import decode_file, to_rgb
from stages.common.prep import ImagePrep


def read_labels(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@dataclass
class Bundle:
    """The exported model with its class names and image-preparation settings."""

    model: Any
    classes: list[str]
    prep: Any

    @property
    def size(self) -> int:
        return int(self.model.input_shape[1])


def load_bundle(models: Path = paths.MODELS_DIR) -> Bundle:
    """classifier.keras (safe mode), labels.txt and prep.json, or exit naming what is missing."""
    model_file, labels, prep = (
        in_models(p, models) for p in (paths.CLASSIFIER, paths.EXPORT_LABELS, paths.EXPORT_PREP)
    )
    missing = [str(p) for p in (model_file, labels, prep) if not p.is_file()]
    if missing:
        sys.exit(
            f"ERROR: {', '.join(missing)} not found. Run `dvc repro` (the export stage) first."
        )
    model = keras.saving.load_model(model_file, safe_mode=True)
    return Bundle(model, read_labels(labels), load_prep(prep))


def decode_photo(path: str | Path, prep: ImagePrep) -> np.ndarray:
    """An image file as the raw-image models take it: uint8 RGB ``(height, width, 3)``.

    What a client's decoder does before calling ``classify_image``: the size checked from the
    header, EXIF orientation applied, any mode converted to RGB (transparency onto white), a
    JPEG decoded at a reduced scale still at least ``prep.draft_size`` (as ``decode_image``
    does, so predict sees the pixels split's ``prepare_image`` saw). Raises ImageError.
    """
    return decode_file(path, prep.draft_size, lambda img: np.asarray(to_rgb(img), dtype=np.uint8))


def load_raw_classifier(models: Path = paths.MODELS_DIR):
    """The SavedModel's ``classify_image`` signature as a function: one raw uint8 RGB image ->
    (calibrated probabilities, the prepared image the model saw), the preparation in-graph."""
    import tensorflow as tf

    folder = in_models(paths.EXPORT_SAVED_MODEL, models)
    if not (folder / "saved_model.pb").is_file():
        sys.exit(f"ERROR: {folder} not found. Run `dvc repro` (the export stage) first.")
    loaded = tf.saved_model.load(str(folder))
    if "classify_image" not in loaded.signatures:
        sys.exit(
            f"ERROR: {folder} has no classify_image signature (exported by an older version). "
            "Run `dvc repro` (the export stage)."
        )
    signature = loaded.signatures["classify_image"]

    def classify_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"expected one RGB image (height, width, 3), got {image.shape}")
        out = signature(image=tf.constant(image, tf.uint8))
        return out["probabilities"].numpy(), out["prepared"].numpy()

    classify_image.loaded = loaded  # the signature only references the loaded variables
    return classify_image
