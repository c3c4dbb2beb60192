"""TensorFlow/Keras setup shared by the stages that need it: quiet, seeded, deterministic."""

from __future__ import annotations

import os


def setup_keras(seed: int | None = None):
    """Import Keras quietly; with a seed, make every random op and kernel reproducible.

    Returns the ``keras`` module. Op determinism makes the same commit and params give
    byte-identical outputs on the same machine.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return keras
