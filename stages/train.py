"""Stage 4, train: fit the dense head on the cached features (the ResNet50 base never runs here).

Head: ``train.layers`` Dense layers with ``train.activation``, each followed by Dropout
(``train.dropout``), then a softmax over the classes; Adam at ``train.learning_rate``.

Outputs: ``models/head.keras`` and ``plots/train_log.csv`` (per-epoch accuracy and loss on
train and val, from ``keras.callbacks.CSVLogger``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stages.common.errors import run_stage
from stages.common.io import atomic_path, load_npy, read_json
from stages.common.params import load_params
from stages.common.tf import setup_keras

FEATURES = Path("data/features")
CLASSES = Path("data/split/classes.json")
HEAD = Path("models/head.keras")
LOG = Path("plots/train_log.csv")


def build_head(keras, x_train: np.ndarray, n_classes: int, train: dict):
    """The classifier trained on cached features: standardise, Dense/Dropout blocks, softmax.

    Standardising each feature with the training set's mean and variance (a Normalization layer,
    saved inside the head) matters: pooled ResNet features differ in scale by orders of magnitude.
    """
    inputs = keras.Input(shape=(x_train.shape[1],), name="features")
    mean, variance = x_train.mean(axis=0, dtype=np.float64), x_train.var(axis=0, dtype=np.float64)
    x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(inputs)
    for i, width in enumerate(train["layers"], start=1):
        x = keras.layers.Dense(width, activation=train["activation"], name=f"dense_{i}")(x)
        if train["dropout"] > 0:
            x = keras.layers.Dropout(train["dropout"], seed=train["seed"] + i, name=f"dropout_{i}")(
                x
            )
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs, name="head")
    model.compile(
        optimizer=keras.optimizers.Adam(train["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    train = load_params("train")["train"]
    keras = setup_keras(train["seed"])
    start = time.perf_counter()
    x_train, y_train = (
        load_npy(FEATURES / "train_features.npy"),
        load_npy(FEATURES / "train_labels.npy"),
    )
    x_val, y_val = load_npy(FEATURES / "val_features.npy"), load_npy(FEATURES / "val_labels.npy")
    classes = read_json(CLASSES)
    model = build_head(keras, x_train, len(classes), train)
    with atomic_path(LOG) as log, atomic_path(HEAD) as head:
        model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=train["epochs"],
            batch_size=train["batch_size"],
            shuffle=True,
            callbacks=[keras.callbacks.CSVLogger(str(log))],
            verbose=2,
        )
        model.save(head)
    print(
        f"train: wrote {HEAD} ({model.count_params():,} parameters) and {LOG} "
        f"({train['epochs']} epochs on {len(x_train)} feature vectors) in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
