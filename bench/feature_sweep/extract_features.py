"""Cache several ResNet50 layers x poolings at once for one checkout (a sweep, not a stage).

    python -m bench.feature_sweep.extract_features PROJECT TAG OUT

PROJECT: a checkout whose ``dvc repro augment`` has run (data/split, data/augmented) with the
split seed to compare; features go to OUT/feat_TAG/<layer>_<pool>_<split>.npy, labels to
OUT/feat_TAG/labels_<split>.npy. Same ImageNet weights, same ``to_model_input`` and the same
BatchNorm-folded base as the extract stage, at the project's image size. Used with
``compare_heads`` to choose ``extract.layer`` and ``extract.pooling`` (README, "Accuracy").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.tf import setup_keras
from stages.common.weights import load_resnet50
from stages.extract import fold_batchnorm, global_pooling, make_forward, make_strategy

LAYERS = ("conv3_block4_out", "conv4_block3_out", "conv4_block6_out")
POOLINGS = ("avg", "max")
BATCH = 128


def split_arrays(project: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 images and labels; train = the training images, then augmented copies."""
    images = [np.load(project / paths.split_images(split))]
    labels = [np.load(project / paths.split_labels(split))]
    if split == "train":
        images.append(np.load(project / paths.AUGMENTED_IMAGES))
        labels.append(np.load(project / paths.AUGMENTED_LABELS))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    project, tag, root = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    keras = setup_keras(42)
    import tensorflow as tf

    size = np.load(project / paths.split_images("val"), mmap_mode="r").shape[1]
    base, _ = load_resnet50("imagenet", size, 42)
    names, outputs = [], []
    for layer in LAYERS:
        for pooling in POOLINGS:
            names.append(f"{layer}_{pooling}")
            outputs.append(global_pooling(keras, pooling, names[-1])(base.get_layer(layer).output))
    model = fold_batchnorm(keras, keras.Model(base.input, outputs))
    forward = make_forward(tf, model, make_strategy(tf))  # the extract stage's forward pass
    out = root / f"feat_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for split in paths.SPLITS:
        images, labels = split_arrays(project, split)
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for lo in range(0, len(images), BATCH):
            for part, features in zip(parts, forward(images[lo : lo + BATCH]), strict=True):
                part.append(features.numpy())
        for name, part in zip(names, parts, strict=True):
            np.save(out / f"{name}_{split}.npy", np.concatenate(part))
        np.save(out / f"labels_{split}.npy", labels)
        print(split, len(images), f"{time.time() - start:.1f}s", flush=True)
    n_train = len(np.load(project / paths.split_labels("train")))
    np.save(out / "n_orig.npy", np.array(n_train))


if __name__ == "__main__":
    main()
