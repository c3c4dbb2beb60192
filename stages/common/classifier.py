"""The shipped model: one Keras model from a prepared uint8 image to class probabilities.

``models/classifier.keras`` (written by the export stage) is::

    image (size, size, 3) uint8 -> Rescaling (minus the ImageNet mean, in RGB order)
        -> feature extractor (its first kernel takes RGB: the caffe flip folded in)
        -> head (the val-fitted temperature folded into its last layer)

and ``models/export/`` beside it holds what a user of the model needs with it:

* ``labels.txt``: the class names, one per line, in the order of the model's outputs (the
  convention of TFLite and Teachable Machine);
* ``prep.json``: the image-preparation settings that turn a file into the model's input
  (what ``decode_image`` needs; the same settings split used for training);
* ``saved_model/`` (TensorFlow SavedModel: ``serve`` on prepared images, ``classify_image`` on
  one raw decoded image), ``classifier.tflite`` (prepared), ``classify_image.tflite`` and
  ``classify_image.onnx`` (raw), ``model.json`` (the model card).

Every layer is one of Keras' own, so ``keras.saving.load_model(path, safe_mode=True)`` loads it
in any Python with Keras, this repository not importable (``tests/test_export.py``). This module
is what the export stage builds and checks the model with; loading and running it for predict
and serve is ``app/classifier.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.io import read_json
from stages.common.prep import ImagePrep
from stages.common.tf import setup_keras

keras = setup_keras()


def in_models(path: Path, models: Path) -> Path:
    """``path`` (one of ``stages.common.paths``' models/ paths) under another models folder."""
    return models / path.relative_to(paths.MODELS_DIR)


# ResNet50's ``preprocess_input`` ("caffe"): RGB -> BGR, then this mean (in BGR order) subtracted.
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
CLASS_LAYER = "classes"  # the head's last Dense (softmax), where the temperature is folded in


def first_convolution(extractor):
    """The Conv2D that reads the extractor's input (through ZeroPadding2D only), or an error."""
    layer = extractor.layers[0]
    while True:
        consumers = [
            node.operation for node in layer._outbound_nodes if node.operation in extractor.layers
        ]
        if len(consumers) != 1:
            break
        layer = consumers[0]
        if isinstance(layer, keras.layers.Conv2D):
            return layer
        if not isinstance(layer, keras.layers.ZeroPadding2D):
            break
    raise ValueError("the feature extractor's input does not go straight into one Conv2D")


def fold_bgr_flip(extractor) -> None:
    """Make ``extractor`` take RGB where it took BGR: its first kernel's input channels reversed.

    A convolution is linear in its input channels, so ``conv(x[..., ::-1], k) ==
    conv(x, k[:, :, ::-1, :])``, and zero padding before it commutes with the channel order.
    Changes the (freshly loaded) extractor in place.
    """
    conv = first_convolution(extractor)
    kernel, *rest = conv.get_weights()
    conv.set_weights([np.ascontiguousarray(kernel[:, :, ::-1, :]), *rest])


def fold_temperature(head, temperature: float) -> None:
    """Divide the head's logits by ``temperature``: its last Dense's kernel and bias, in place.

    ``softmax((W x + b) / T) == softmax((W / T) x + b / T)``: the calibrated probabilities,
    with no extra layer (``stages/common/calibration.py`` fits T).
    """
    layer = head.get_layer(CLASS_LAYER)
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    layer.set_weights(
        [(kernel / temperature).astype(np.float32), (bias / temperature).astype(np.float32)]
    )


def build_classifier(extractor, head, size: int, temperature: float = 1.0):
    """The frozen extractor and the trained head as one model on uint8 images, Keras layers only.

    ``to_model_input`` (ResNet50's caffe preprocessing) becomes a ``Rescaling`` layer that casts
    to float32 and subtracts the ImageNet mean (in RGB order) and the RGB -> BGR flip folded into
    the first convolution (``fold_bgr_flip``); the temperature is folded into the head's last
    layer. So ``keras.saving.load_model(path, safe_mode=True)`` needs nothing but Keras.
    Changes ``extractor`` and ``head`` in place (load them fresh).
    """
    fold_bgr_flip(extractor)
    if temperature != 1.0:
        fold_temperature(head, temperature)
    extractor.trainable = False
    head.trainable = False
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(
        1.0, offset=[-m for m in reversed(IMAGENET_MEAN_BGR)], name="subtract_imagenet_mean"
    )(image)
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


def load_prep(path: Path) -> ImagePrep:
    """prep.json -> the second argument of ``decode_image``."""
    return ImagePrep.from_params(read_json(path))


def classify(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (n, size, size, 3) -> class probabilities (n, classes)."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return model.predict(images, batch_size=batch_size, verbose=0)
