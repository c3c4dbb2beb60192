"""The shipped model: one Keras model from a prepared uint8 image to class probabilities.

``models/classifier.keras`` (written by the export stage) is::

    image (size, size, 3) uint8 -> ModelInput (to_model_input) -> feature extractor -> head

and ``models/export/`` beside it holds what a user of the model needs with it:

* ``labels.txt``: the class names, one per line, in the order of the model's outputs (the
  convention of TFLite and Teachable Machine);
* ``prep.json``: the image-preparation settings that turn a file into the model's input
  (what ``decode_image`` needs; the same settings split used for training);
* ``saved_model/`` (TensorFlow SavedModel, endpoint ``serve``) and ``classifier.tflite``.

Importing this module registers ``ModelInput`` with Keras, which loading ``classifier.keras``
in safe mode needs (it is a plain registered layer, no Lambda, so no code is deserialized).
predict and serve load the model through ``load_bundle`` and prepare images with
``load_prep``, so a new image goes through exactly what training did.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import paths
from stages.common.images import ImagePrep, to_model_input
from stages.common.io import read_json
from stages.common.tf import setup_keras

keras = setup_keras()


def in_models(path: Path, models: Path) -> Path:
    """``path`` (one of ``stages.common.paths``' models/ paths) under another models folder."""
    return models / path.relative_to(paths.MODELS_DIR)


@keras.saving.register_keras_serializable(package="digits_transfer")
class ModelInput(keras.layers.Layer):
    """``to_model_input`` as a layer: uint8 RGB images -> ResNet50's input (float32).

    The very function extract applied before caching the features, so the shipped model takes
    the same prepared images that split writes.
    """

    def call(self, images):
        return to_model_input(images)

    def compute_output_shape(self, input_shape):
        return input_shape


def build_classifier(extractor, head, size: int):
    """Compose the frozen extractor and the trained head into one model on uint8 images."""
    extractor.trainable = False
    head.trainable = False
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = ModelInput(name="to_model_input")(image)
    probabilities = head(extractor(x))
    return keras.Model(image, probabilities, name="classifier")


def write_labels(path: Path, classes: list[str]) -> None:
    """labels.txt, one class per line; a name with a line break cannot be written that way."""
    from stages.common.errors import PipelineError
    from stages.common.io import write_text

    broken = [c for c in classes if "\n" in c or "\r" in c]
    if broken:
        raise PipelineError(
            f"class name(s) {broken} contain a line break, which labels.txt cannot hold. "
            "Rename those class folders."
        )
    write_text(path, "".join(f"{c}\n" for c in classes))


def read_labels(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def load_prep(path: Path) -> ImagePrep:
    """prep.json -> the second argument of ``decode_image``."""
    return ImagePrep.from_params(read_json(path))


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


def classify(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (n, size, size, 3) -> class probabilities (n, classes)."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return model.predict(images, batch_size=batch_size, verbose=0)
