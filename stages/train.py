"""Stage 4, train: fit the dense head on the cached features (the ResNet50 base never runs here).

Head: a Normalization layer that standardises the features, ``train.layers`` Dense layers with
``train.activation`` (L2 weight decay ``train.l2``), each followed by Dropout
(``train.dropout``), then a softmax over the classes. Adam at ``train.learning_rate``, constant or
cosine-decayed over ``train.epochs`` (``train.lr_schedule``); cross-entropy with
``train.label_smoothing``.

``train.precision``: the hidden Dense layers (the head's one large matmul) compute in float32
(the default: the same head on every CPU, docs/reproducibility.md) or, opted into,
``mixed_bfloat16`` (float32 weights, bfloat16 products: faster on bfloat16 units, but the head's
bytes then depend on the hardware); ``auto`` picks bfloat16 where the machine has bfloat16 units
(a CPU with AVX512_BF16 or AMX, a GPU of compute capability 8.0 or more) and float32 elsewhere,
where bfloat16 would be emulated and slower. The saved head is float32 either way: the trained
weights in a float32 copy of the same head (``float32_head``), which also writes the predictions.

The epoch, on val only: ``train.monitor`` (default ``val_loss``, the training objective on the
val images: cross-entropy with this run's label smoothing; or ``val_log_loss``, the plain,
unsmoothed cross-entropy, a Keras metric beside it; or ``val_accuracy``). With
``train.patience`` > 0, training stops once it has not improved by more than
``train.min_delta`` for that many epochs, and the head keeps the weights of its best epoch.
(The defaults themselves are chosen across runs by the fewest val errors:
docs/model-selection.md.)

Memory stays flat however many feature vectors there are: the cached features are memory-mapped,
the Normalization layer's mean and variance are summed chunk by chunk (``feature_moments``), each
training batch reads only its shuffled rows from the file (``train_dataset``), and a val set of
more than ``STREAM_ROWS`` vectors is evaluated chunk by chunk; pages mapped are handed back to the
OS as soon as a chunk is done. The head and its predictions are byte for byte those of the whole
set held in memory (tests/test_train.py); ``python -m bench.scale`` measures peak memory and epoch
time as the number of vectors grows.

Outputs: ``models/head.keras``; ``plots/train_log.csv`` (per epoch, from
``keras.callbacks.CSVLogger``: ``loss``/``val_loss`` the training objective, smoothed
cross-entropy plus any L2 penalty; ``log_loss``/``val_log_loss`` the plain log-loss;
``accuracy``/``val_accuracy``); ``data/predictions/{train,val,test}_probs.npy``: the saved
head's class probabilities for each split's cached features (train: the original images only),
so that evaluate scores them without starting TensorFlow a second time. The test features are
only run through the finished head here; nothing about training looks at them.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import (
    atomic_path,
    load_npy,
    read_json,
    release_rows,
    save_model,
    save_npy,
)
from stages.common.params import load_params, validate_section
from stages.common.tf import setup_keras

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.FEATURES_DIR, paths.CLASSES, paths.split_labels("train"))
WRITES = (paths.HEAD, paths.TRAIN_LOG, paths.PROBS_DIR)


BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names
BFLOAT16_GPU_CAPABILITY = (8, 0)  # Ampere and later: bfloat16 tensor cores


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where that cannot be read."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def auto_policy(gpu_capabilities: Iterable[tuple[int, int]], flags: frozenset[str]) -> str:
    """``train.precision: auto`` on a machine with these GPUs (compute capabilities) and CPU
    flags: mixed_bfloat16 where the devices that will train have bfloat16 units, else float32."""
    gpus = list(gpu_capabilities)
    if gpus:
        native = all(tuple(c) >= BFLOAT16_GPU_CAPABILITY for c in gpus)
    else:
        native = bool(BFLOAT16_CPU_FLAGS & flags)
    return "mixed_bfloat16" if native else "float32"


def hidden_policy(precision: str) -> str:
    """``train.precision`` as the Keras dtype policy of the hidden layers, ``auto`` resolved."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return auto_policy(capabilities, cpu_flags())


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def learning_rate(keras, train: dict, n_train: int):
    """Adam's learning rate: a float, or a cosine decay to 0 over all ``train.epochs``."""
    if train["lr_schedule"] == "cosine":
        steps = train["epochs"] * steps_per_epoch(n_train, train["batch_size"])
        return keras.optimizers.schedules.CosineDecay(train["learning_rate"], decay_steps=steps)
    return train["learning_rate"]


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows: what the head's loss and accuracy compare with.

    Keras' label smoothing exists for one-hot targets only (CategoricalCrossentropy).
    """
    return np.eye(n_classes, dtype=np.float32)[np.asarray(labels)]


def head_metrics(keras) -> list:
    """Accuracy and the plain log-loss (no smoothing, no L2), beside the objective ``loss``."""
    return ["accuracy", keras.metrics.CategoricalCrossentropy(name="log_loss")]


def build_head(keras, x_train: np.ndarray, n_classes: int, train: dict):
    """The classifier trained on cached features: standardise, Dense/Dropout blocks, softmax.

    Standardising each feature with the training set's mean and variance (a Normalization layer,
    saved inside the head) matters: pooled ResNet features differ in scale by orders of magnitude.
    ``train`` is the complete, validated ``train`` section. Returns the model compiled for one-hot
    labels (``one_hot``), with ``train.label_smoothing``; the hidden Dense and Dropout layers
    compute in ``hidden_policy(train["precision"])``, the rest in float32.
    """
    validate_section("train", train)
    policy = hidden_policy(train["precision"])
    l2 = keras.regularizers.L2(train["l2"]) if train["l2"] > 0 else None
    inputs = keras.Input(shape=(x_train.shape[1],), name="features")
    mean, variance = feature_moments(x_train)
    x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(inputs)
    for i, width in enumerate(train["layers"], start=1):
        x = keras.layers.Dense(
            width,
            activation=train["activation"],
            kernel_regularizer=l2,
            name=f"dense_{i}",
            dtype=policy,
        )(x)
        if train["dropout"] > 0:
            x = keras.layers.Dropout(
                train["dropout"], seed=train["seed"] + i, name=f"dropout_{i}", dtype=policy
            )(x)
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=l2, name="classes"
    )(x)
    model = keras.Model(inputs, outputs, name="head")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(keras, train, len(x_train))),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train["label_smoothing"]),
        metrics=head_metrics(keras),
        # One call into TensorFlow per epoch, not per batch: about 15 % faster epochs here.
        steps_per_execution=steps_per_epoch(len(x_train), train["batch_size"]),
    )
    return model


def callbacks(keras, train: dict, log: Path) -> list:
    """CSVLogger always; early stopping on ``train.monitor``, best weights restored, when
    patience > 0 (an epoch counts as better only by more than ``train.min_delta``)."""
    found = [keras.callbacks.CSVLogger(str(log))]
    if train["patience"] > 0:
        found.append(
            keras.callbacks.EarlyStopping(
                monitor=train["monitor"],
                min_delta=train["min_delta"],
                patience=train["patience"],
                restore_best_weights=True,
            )
        )
    return found


STREAM_ROWS = 65_536  # val vectors evaluated as one batch at most; more are read in chunks
MOMENT_ROWS = 1_024  # feature rows per chunk of feature_moments (float64: 8 MiB at 1,024-d)


def feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and variance of ``x``, read MOMENT_ROWS rows at a time.

    Two sequential passes over a memory-mapped array (mean, then the squared deviations from
    it), each a running float64 sum in row order: numpy's own order for ``x.mean(axis=0,
    dtype=float64)`` and ``x.var(axis=0, dtype=float64)``, so the same numbers bit for bit
    (the Normalization layer keeps them in the saved head's config), with memory for one chunk.
    """
    n, dim = x.shape
    total = np.zeros((1, dim))
    for lo in range(0, n, MOMENT_ROWS):
        chunk = x[lo : lo + MOMENT_ROWS].astype(np.float64)
        total = np.sum(np.concatenate([total, chunk]), axis=0, keepdims=True)
        release_rows(x, lo, lo + len(chunk))
    mean = total / max(n, 1)
    squares = np.zeros((1, dim))
    for lo in range(0, n, MOMENT_ROWS):
        deviation = x[lo : lo + MOMENT_ROWS] - mean
        squares = np.sum(np.concatenate([squares, deviation * deviation]), axis=0, keepdims=True)
        release_rows(x, lo, lo + len(deviation))
    return mean[0], squares[0] / max(n, 1)


def file_rows(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """Row indices -> those rows of a memory-mapped float32 ``x``, read from its file with one
    ``preadv`` per run of consecutive rows; None where ``x`` is not a whole mapped file.

    Not through the mapping: a page fault maps the whole page-cache folio around the page asked
    for, so 1,024 shuffled 4 KiB rows mapped 260 MB here (256 KiB a row; how much depends on
    the kernel and how it cached the file), however soon they were released. Read this way the
    resident memory is the batch itself. The same bytes either way.
    """
    mapped = isinstance(getattr(x, "base", None), mmap.mmap) and x.flags.c_contiguous
    if not mapped or x.dtype != np.float32:
        return None
    fd = os.open(x.filename, os.O_RDONLY)
    row_bytes = x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64))

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *x.shape[1:]), np.float32)
        if not out.size:
            return out
        view = memoryview(out).cast("B")
        cuts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        for lo, hi in itertools.pairwise(cuts):
            where, size = x.offset + int(rows[lo]) * row_bytes, (hi - lo) * row_bytes
            if hi > lo and os.preadv(fd, [view[lo * row_bytes : hi * row_bytes]], where) != size:
                raise OSError(f"{x.filename}: rows {rows[lo]}..{rows[hi - 1]} cut short")
        return out

    weakref.finalize(read, os.close, fd)  # the file stays open as long as the reader lives
    return read


def row_reader(x: np.ndarray, labels: np.ndarray, n_classes: int) -> Callable:
    """Row indices -> (their feature rows as float32, their one-hot labels), read from ``x``.

    ``x`` may be memory-mapped: only the rows asked for are read, from the file (``file_rows``),
    so the resident memory stays that of one batch however many rows the file holds.
    """
    eye = np.eye(n_classes, dtype=np.float32)  # the rows of ``one_hot``
    labels = np.asarray(labels)
    from_file = file_rows(x)

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if from_file is not None:
            return from_file(rows), eye[labels[rows]]
        return np.asarray(x[rows], dtype=np.float32), eye[labels[rows]]

    return read


def row_batches(tf, rows, x: np.ndarray, labels: np.ndarray, n_classes: int):
    """``rows`` (a dataset of row-index batches) -> (features, one-hot labels) batches."""
    read = row_reader(x, labels, n_classes)
    dim = x.shape[1]

    def gather(batch):
        features, targets = tf.numpy_function(read, [batch], [tf.float32, tf.float32])
        features.set_shape((None, dim))
        targets.set_shape((None, n_classes))
        return features, targets

    return rows.map(gather).prefetch(2)


def epoch_rows(tf, n: int, batch_size: int, seed: int):
    """Batches of row indices, in a new seeded order each epoch (each iteration of the dataset).

    Each epoch draws a seed (``Dataset.random``, seeded) and shuffles the indices with it as one
    tensor (``stateless_shuffle``: 8 bytes a row, where tf.data's shuffle buffer holds each
    index as a tensor of its own, 200 to 350 bytes a row), so memory stays flat in ``n``.
    """

    def epoch_order(epoch_seed):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, tf.constant(seed, tf.int64)])
        )
        return tf.data.Dataset.from_tensor_slices(order)

    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return epoch_seeds.flat_map(epoch_order).batch(batch_size)


def train_dataset(x: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int, seed: int):
    """Shuffled training batches (``epoch_rows``), each gathered from ``x`` (memory-mapped or
    not) when needed: each batch reads its rows (``file_rows``), so the feature vectors are
    never all in memory at once. Same batches, in the same order, as gathering from the whole
    array held as a tensor (tests/test_train.py compares the saved heads byte for byte).
    """
    import tensorflow as tf

    return row_batches(tf, epoch_rows(tf, len(x), batch_size, seed), x, labels, n_classes)


def validation_dataset(x_val: np.ndarray, y_val: np.ndarray, n_classes: int):
    """The val features and one-hot labels as a ``tf.data`` dataset.

    Up to STREAM_ROWS vectors: one cached batch (Keras re-wraps NumPy validation arrays for
    every epoch's evaluation; a ready dataset made an evaluation of the 269 val vectors 5x
    cheaper here). More: consecutive STREAM_ROWS-row batches read from ``x_val`` at each
    evaluation, so memory stays flat.
    """
    import tensorflow as tf

    if len(x_val) <= STREAM_ROWS:
        x, y = np.asarray(x_val), one_hot(y_val, n_classes)
        dataset = tf.data.Dataset.from_tensor_slices((x, y))  # a copy: the mapped pages can go
        release_rows(x_val, 0, len(x_val))
        return dataset.batch(max(1, len(x_val))).cache()
    rows = tf.data.Dataset.range(len(x_val)).batch(STREAM_ROWS)
    return row_batches(tf, rows, x_val, y_val, n_classes)


def fit_head(
    keras,
    model,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    train: dict,
    log: Path,
    extra: Sequence = (),
) -> tuple[int, int]:
    """Fit ``model`` on integer labels; return (epochs run, epoch whose weights it keeps), from 1.

    ``extra``: more Keras callbacks (the benchmark's epoch timer).
    """
    n_classes = model.output_shape[-1]
    (x_train, y_train), (x_val, y_val) = train_data, val_data
    found = callbacks(keras, train, log)
    history = model.fit(
        train_dataset(x_train, y_train, n_classes, train["batch_size"], train["seed"]),
        validation_data=validation_dataset(x_val, y_val, n_classes),
        epochs=train["epochs"],
        shuffle=False,  # the dataset shuffles itself (seeded); fit would only warn
        callbacks=[*found, *extra],
        verbose=2,
    )
    ran = len(history.history["loss"])
    stopper = [c for c in found if isinstance(c, keras.callbacks.EarlyStopping)]
    return ran, (stopper[0].best_epoch + 1 if stopper else ran)


def float32_head(keras, model):
    """``model`` (trained in any ``train.precision``) as the float32 head that is saved: a clone
    of its layers, each in float32, holding its weights. Returns ``model`` itself when it is
    float32."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    shipped = keras.models.clone_model(
        model,
        clone_function=lambda layer: layer.__class__.from_config(
            {**layer.get_config(), "dtype": "float32"}
        ),
    )
    shipped.set_weights(model.get_weights())
    return shipped


PREDICT_ROWS = 8192  # feature vectors per call of the head in write_predictions


def predict_chunk(keras, model, features: np.ndarray, lo: int, end: int) -> np.ndarray:
    """The head's output for rows [lo, min(lo + PREDICT_ROWS, end)) of ``features``, whose pages
    are then handed back to the OS (``features`` may be memory-mapped and larger than memory)."""
    chunk = np.asarray(features[lo : min(lo + PREDICT_ROWS, end)])
    probs = keras.ops.convert_to_numpy(model(chunk, training=False))
    release_rows(features, lo, lo + len(chunk))
    return probs


def head_probabilities(keras, model, features: np.ndarray, rows: int | None = None) -> np.ndarray:
    """The head's class probabilities for the first ``rows`` (default: all) of ``features``, as
    float32, in chunks of PREDICT_ROWS. Pass a memory-mapped file whole and ``rows``, not a
    slice: the pages of a slice's rows cannot be handed back (``release_rows``).

    Direct calls of the model (inference mode), not ``model.predict``: predict traces a new
    function and builds a data adapter for each call, about 0.1 s each here for a few hundred
    vectors; the numbers are the same (``tests/test_train.py`` compares with predict).
    """
    end = len(features) if rows is None else rows
    chunks = [predict_chunk(keras, model, features, i, end) for i in range(0, end, PREDICT_ROWS)]
    n_classes = model.output_shape[-1]
    return (
        np.concatenate(chunks).astype(np.float32)
        if chunks
        else np.zeros((0, n_classes), np.float32)
    )


def write_predictions(keras, model, n_train: int) -> None:
    """The head's class probabilities for each split's cached features, as float32 ``.npy``.

    Train keeps its first ``n_train`` rows: the original images, not their augmented copies.
    """
    for split in paths.SPLITS:
        features = load_npy(paths.features(split), mmap=True)
        rows = n_train if split == "train" else len(features)
        save_npy(paths.probs(split), head_probabilities(keras, model, features, rows))


def main() -> None:
    train = load_params("train")["train"]
    keras = setup_keras(train["seed"])
    start = time.perf_counter()
    # Features memory-mapped: read batch by batch, never all in memory (``train_dataset``).
    x_train, y_train = (
        load_npy(paths.features("train"), mmap=True),
        load_npy(paths.feature_labels("train")),
    )
    x_val = load_npy(paths.features("val"), mmap=True)
    y_val = load_npy(paths.feature_labels("val"))
    classes = read_json(paths.CLASSES)
    model = build_head(keras, x_train, len(classes), train)
    with atomic_path(paths.TRAIN_LOG) as log:
        ran, best = fit_head(keras, model, (x_train, y_train), (x_val, y_val), train, log)
        shipped = float32_head(keras, model)
        save_model(shipped, paths.HEAD)
        write_predictions(keras, shipped, len(load_npy(paths.split_labels("train"))))
    print(
        f"train: wrote {paths.HEAD} ({model.count_params():,} parameters, weights of epoch "
        f"{best}, selected on {train['monitor']}), {paths.TRAIN_LOG} and {paths.PROBS_DIR}/ "
        f"({ran} of {train['epochs']} epochs on {len(x_train)} feature vectors, hidden layers "
        f"in {hidden_policy(train['precision'])}) "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
