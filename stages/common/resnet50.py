"""The ResNet50 base and the content hash that says which weights it holds.

The bottom of the weights code: ``imagenet_npm`` (the npm conversion) builds on this module and
``weights`` (the resolver behind ``extract.weights``) on both; neither is imported here.
"""

from __future__ import annotations

import hashlib

from stages.common.errors import PipelineError

# sha256 over model.get_weights() of ResNet50(include_top=False) with the ImageNet weights, each
# array as contiguous little-endian float32 bytes, in order (the definition used throughout).
IMAGENET_NOTOP_SHA256 = "0bc980a428a36f420900bb40cf356286902c7c909755c5deef65ccacf39cf9fb"


class WeightsError(PipelineError):
    """The requested weights could not be obtained or do not fit ResNet50."""


def build_resnet50(input_size: int, weights: str | None = None, include_top: bool = False):
    """``keras.applications.ResNet50`` on square RGB inputs of ``input_size`` pixels.

    The input is named: unnamed, Keras names it after a process-wide counter (``keras_tensor_350``),
    and a saved model's bytes would depend on what the process had built before.
    """
    import keras

    shape = (input_size, input_size, 3)
    return keras.applications.ResNet50(
        include_top=include_top,
        weights=weights,
        input_tensor=keras.Input(shape, name="resnet50_input"),
        input_shape=shape,
    )


def weights_content_hash(model) -> str:
    """sha256 over ``model.get_weights()`` in order, each as contiguous little-endian float32."""
    import numpy as np

    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


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
