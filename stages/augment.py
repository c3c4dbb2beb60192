"""Stage 2, augment: write ``augment.copies`` seeded augmented variants of each training image.

Validation and test images are never augmented. The transformations are Keras preprocessing
layers (RandomRotation, RandomTranslation, RandomZoom, and for photo-like lighting
RandomBrightness and RandomContrast); borders are filled with the nearest edge pixel, so paper
stays paper. A factor of 0 leaves its layer out.

Outputs (``data/augmented/``): ``images.npy`` (copies x train images, uint8) and ``labels.npy``.
"""

from __future__ import annotations

import time

import numpy as np

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import load_npy, npy_writer, save_npy
from stages.common.params import load_params
from stages.common.tf import setup_keras

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.split_images("train"), paths.split_labels("train"))
WRITES = (paths.AUGMENTED_DIR,)


def build_augmenter(keras, augment: dict):
    """The random transformations, as one Keras model of preprocessing layers."""
    seed = augment["seed"]
    layers = [
        keras.layers.RandomRotation(augment["rotation"], fill_mode="nearest", seed=seed),
        keras.layers.RandomTranslation(
            augment["translation"], augment["translation"], fill_mode="nearest", seed=seed + 1
        ),
        keras.layers.RandomZoom(augment["zoom"], fill_mode="nearest", seed=seed + 2),
        keras.layers.RandomBrightness(augment["brightness"], value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomContrast(augment["contrast"], value_range=(0, 255), seed=seed + 4),
    ]
    factors = ("rotation", "translation", "zoom", "brightness", "contrast")
    return keras.Sequential(
        [layer for layer, factor in zip(layers, factors, strict=True) if augment[factor] > 0]
    )


def main() -> None:
    augment = load_params("augment")["augment"]
    start = time.perf_counter()
    images = load_npy(paths.split_images("train"), mmap=True)
    labels = load_npy(paths.split_labels("train"))
    copies, batch = augment["copies"], augment["batch_size"]
    n = len(images)
    with npy_writer(paths.AUGMENTED_IMAGES, (copies * n, *images.shape[1:]), np.uint8) as out:
        if copies:
            keras = setup_keras(augment["seed"])
            augmenter = build_augmenter(keras, augment)
            progress = keras.utils.Progbar(copies * n, unit_name="image")
            for copy in range(copies):
                for lo in range(0, n, batch):
                    x = np.asarray(images[lo : lo + batch], dtype=np.float32)
                    y = keras.ops.convert_to_numpy(augmenter(x, training=True))
                    out[copy * n + lo : copy * n + lo + len(x)] = np.clip(
                        np.rint(y), 0, 255
                    ).astype(np.uint8)
                    progress.add(len(x))
    save_npy(paths.AUGMENTED_LABELS, np.tile(labels, copies))
    print(
        f"augment: wrote {paths.AUGMENTED_DIR}/ ({copies} copies x {n} training images = {copies * n} images) "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
