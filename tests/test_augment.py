"""augment's warp is Keras' affine_transform, number for number, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from stages import augment
from stages.common.tf import setup_keras


def transforms(n: int, size: int, seed: int) -> np.ndarray:
    """Random maps in Keras' convention, wide enough that many points fall outside the image."""
    rng = np.random.default_rng(seed)
    params = {"rotation": 0.5, "translation": 0.6, "zoom": 0.5, "brightness": 0.0, "contrast": 0.0}
    keys = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return np.stack([augment.draw(k.tobytes(), params, size)[0] for k in keys])


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (17, 1), (64, 3)])
def test_the_warp_is_keras_affine_transform(size: int, channels: int) -> None:
    keras = setup_keras(0)
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (40, size, size, channels), dtype=np.uint8)
    maps = transforms(len(images), size, seed=size)
    maps[0] = [1, 0, 0, 0, 1, 0, 0, 0]  # the identity: every pixel read where it is
    expected = keras.ops.convert_to_numpy(
        keras.ops.image.affine_transform(
            images.astype(np.float32), maps, interpolation="bilinear", fill_mode="nearest"
        )
    )
    got = augment.affine_bilinear(images, maps)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[0], images[0].astype(np.float32))


def test_the_stage_imports_no_tensorflow() -> None:
    """What makes a rerun on a grown folder start at once: augment never loads TensorFlow."""
    code = (
        "import sys, numpy as np, stages.augment as a\n"
        "params = {'rotation': .1, 'translation': .1, 'zoom': .1, 'brightness': .1, 'contrast': .1}\n"
        "a.augment_batch(np.zeros((2, 8, 8, 3), np.uint8), np.ones((2, 32), np.uint8), params)\n"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
