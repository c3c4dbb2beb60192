"""The head's training options on tiny synthetic features: early stopping, L2, label smoothing,
the learning-rate schedule, and the train stage run whole on files in a temporary directory."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from sklearn.metrics import log_loss

from stages import train as train_stage
from stages.common import paths
from stages.common.io import save_model
from stages.common.params import ParamsError, validate
from stages.common.tf import setup_keras

N_CLASSES = 3
TRAIN = {
    "seed": 0,
    "layers": [16],
    "activation": "relu",
    "dropout": 0.0,
    "epochs": 5,
    "batch_size": 32,
    "learning_rate": 0.01,
    "l2": 0.0,
    "label_smoothing": 0.0,
    "lr_schedule": "constant",
    "patience": 0,
    "monitor": "val_log_loss",
    "min_delta": 0.0,
    "precision": "float32",
}


@pytest.fixture(scope="module")
def keras():
    return setup_keras(0)


def blobs(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 8-dimensional points around one centre per class, with integer labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n).astype(np.int32)
    centres = np.eye(N_CLASSES, 8) * 3.0
    return (centres[labels] + noise * rng.normal(size=(n, 8))).astype(np.float32), labels


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_early_stopping_stops_and_restores_the_best_weights(keras, tmp_path: Path) -> None:
    # Random labels: the head can only memorise, so val loss bottoms out early and then rises.
    x, _ = blobs(64, seed=1)
    y = np.random.default_rng(2).integers(0, N_CLASSES, 64).astype(np.int32)
    x_val, _ = blobs(64, seed=3)
    y_val = np.random.default_rng(4).integers(0, N_CLASSES, 64).astype(np.int32)
    train = {**TRAIN, "layers": [64], "epochs": 200, "batch_size": 16, "patience": 3}
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    ran, best = train_stage.fit_head(keras, model, (x, y), (x_val, y_val), train, tmp_path / "log")

    val_losses = [float(row["val_log_loss"]) for row in read_log(tmp_path / "log")]
    assert ran == len(val_losses) < 200
    assert best == int(np.argmin(val_losses)) + 1 == ran - 3
    kept_loss = log_loss(y_val, model.predict(x_val, verbose=0), labels=[0, 1, 2])
    assert kept_loss == pytest.approx(min(val_losses), rel=1e-4)
    assert kept_loss < val_losses[-1]


def test_min_delta_ignores_improvements_smaller_than_it(keras, tmp_path: Path) -> None:
    # Separable blobs: val log-loss keeps falling a little every epoch. With a min_delta larger
    # than those steps, the first epoch's weights stay the best and training stops early.
    x, y = blobs(64, seed=1, noise=0.3)
    train = {**TRAIN, "epochs": 50, "patience": 2, "learning_rate": 0.001}
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    ran, _ = train_stage.fit_head(
        keras, model, (x, y), blobs(32, seed=2, noise=0.3), train, tmp_path / "a"
    )
    strict = {**train, "min_delta": 0.5}
    model = train_stage.build_head(keras, x, N_CLASSES, strict)
    ran_strict, best_strict = train_stage.fit_head(
        keras, model, (x, y), blobs(32, seed=2, noise=0.3), strict, tmp_path / "b"
    )
    val = [float(row["val_log_loss"]) for row in read_log(tmp_path / "b")]
    assert ran_strict < ran
    assert best_strict == 1 and ran_strict == 3
    assert min(val) < val[0], "later epochs were better, but not by min_delta"


def test_log_loss_is_unsmoothed_and_the_objective_smoothed(keras, tmp_path: Path) -> None:
    x, y = blobs(64, seed=1)
    train = {**TRAIN, "epochs": 2, "label_smoothing": 0.2}
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    x_val, y_val = blobs(32, seed=2)
    train_stage.fit_head(keras, model, (x, y), (x_val, y_val), train, tmp_path / "log")
    last = read_log(tmp_path / "log")[-1]
    probs = model.predict(x_val, verbose=0)
    assert float(last["val_log_loss"]) == pytest.approx(
        log_loss(y_val, probs, labels=[0, 1, 2]), rel=1e-4
    )
    assert float(last["val_loss"]) > float(last["val_log_loss"]), "smoothing adds to the loss"


def test_patience_zero_runs_every_epoch(keras, tmp_path: Path) -> None:
    x, y = blobs(64, seed=1)
    model = train_stage.build_head(keras, x, N_CLASSES, TRAIN)
    ran, _ = train_stage.fit_head(keras, model, (x, y), blobs(32, seed=2), TRAIN, tmp_path / "log")
    assert ran == TRAIN["epochs"] == len(read_log(tmp_path / "log"))


def test_l2_penalises_every_dense_kernel(keras) -> None:
    x, _ = blobs(16, seed=1)
    model = train_stage.build_head(keras, x, N_CLASSES, {**TRAIN, "layers": [16, 8], "l2": 0.01})
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert len(kernels) == 3
    penalty = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    assert penalty == pytest.approx(0.01 * sum(float(np.sum(k**2)) for k in kernels), rel=1e-5)
    plain = train_stage.build_head(keras, x, N_CLASSES, TRAIN)
    assert plain.losses == []


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_reaches_the_loss(keras, smoothing: float) -> None:
    x, _ = blobs(16, seed=1)
    model = train_stage.build_head(keras, x, N_CLASSES, {**TRAIN, "label_smoothing": smoothing})
    y_true = np.array([0, 2], dtype=np.int32)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    targets = (1 - smoothing) * np.eye(N_CLASSES)[y_true] + smoothing / N_CLASSES
    expected = float(np.mean(-np.sum(targets * np.log(y_pred), axis=1)))
    loss = model.compute_loss(x=None, y=train_stage.one_hot(y_true, N_CLASSES), y_pred=y_pred)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("schedule", "last_rate"), [("constant", 0.01), ("cosine", 0.0)])
def test_learning_rate_schedule(keras, tmp_path: Path, schedule: str, last_rate: float) -> None:
    x, y = blobs(64, seed=1)
    train = {**TRAIN, "lr_schedule": schedule}
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    train_stage.fit_head(keras, model, (x, y), blobs(32, seed=2), train, tmp_path / "log")
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rate == pytest.approx(last_rate, abs=1e-7)
    assert model.optimizer.iterations.numpy() == 5 * 2  # epochs x ceil(64 / 32) steps


def test_build_head_refuses_an_incomplete_train_dict(keras) -> None:
    """No second set of defaults: a caller that leaves a key out is told, not given another head."""
    x, _ = blobs(16, seed=1)
    partial = {k: v for k, v in TRAIN.items() if k != "label_smoothing"}
    with pytest.raises(ParamsError, match=re.escape("missing key 'train.label_smoothing'")):
        train_stage.build_head(keras, x, N_CLASSES, partial)


def project_params() -> dict:
    return yaml.safe_load((REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("l2", -0.001, "'train.l2' parameter must be a number in [0, 1)"),
        ("label_smoothing", 1.0, "'train.label_smoothing' parameter must be a number in [0, 1)"),
        ("lr_schedule", "cosin", "'train.lr_schedule' parameter must be one of"),
        ("patience", -1, "'train.patience' parameter must be an integer"),
        ("patience", 2.5, "'train.patience' parameter must be an integer"),
        ("monitor", "val_los", "'train.monitor' parameter must be one of"),
        ("precision", "bf16", "'train.precision' parameter must be one of"),
        ("min_delta", -0.1, "'train.min_delta' parameter must be a number in [0, 1)"),
    ],
)
def test_params_refuse_bad_head_options(key: str, value, message: str) -> None:
    params = project_params()
    params["train"][key] = value
    with pytest.raises(ParamsError, match=re.escape(message)):
        validate(params)


def test_train_stage_writes_a_head_that_loads_in_safe_mode(
    keras, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage itself, with smoothing, L2, cosine and early stopping all on."""
    features = tmp_path / paths.FEATURES_DIR
    features.mkdir(parents=True)
    for split, n, seed in (("train", 96, 1), ("val", 48, 2), ("test", 40, 3)):
        x, y = blobs(n, seed=seed, noise=2.0)
        np.save(tmp_path / paths.features(split), x)
        np.save(tmp_path / paths.feature_labels(split), y)
    (tmp_path / paths.SPLIT_DIR).mkdir()
    (tmp_path / paths.CLASSES).write_text(json.dumps(["a", "b", "c"]))
    # The first 64 training rows are "original images"; the rest stand for augmented copies.
    np.save(tmp_path / paths.split_labels("train"), blobs(96, seed=1)[1][:64])
    params = project_params()
    params["train"] = {
        **TRAIN,
        "layers": [32],
        "epochs": 60,
        "l2": 0.001,
        "label_smoothing": 0.1,
        "lr_schedule": "cosine",
        "patience": 2,
    }
    (tmp_path / paths.PARAMS_FILE).write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    train_stage.main()

    rows = read_log(tmp_path / paths.TRAIN_LOG)
    assert 3 <= len(rows) < 60
    out = capsys.readouterr().out
    assert f"({len(rows)} of 60 epochs on 96 feature vectors, hidden layers in float32)" in out
    # The saved head is the best epoch's (by val log-loss), and loads in Keras' safe mode.
    best = min(rows, key=lambda row: float(row["val_log_loss"]))
    head = keras.saving.load_model(tmp_path / paths.HEAD, safe_mode=True)
    x_val, y_val = blobs(48, seed=2, noise=2.0)
    accuracy = np.mean(head.predict(x_val, verbose=0).argmax(1) == y_val)
    assert accuracy == pytest.approx(float(best["val_accuracy"]), abs=1e-6)
    assert accuracy > 0.5  # three classes: chance is 1/3
    # The probabilities written for evaluate are the saved head's, split by split.
    for split, rows_kept in (("train", 64), ("val", 48), ("test", 40)):
        probs = np.load(tmp_path / paths.probs(split), allow_pickle=False)
        x = np.load(tmp_path / paths.features(split))[:rows_kept]
        assert probs.shape == (rows_kept, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, head.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("gpus", "flags", "expected"),
    [
        ([], {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
        ([], {"avx512f", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        ([], {"avx2", "avx512f"}, "float32"),  # bfloat16 would be emulated: slower
        ([], set(), "float32"),  # /proc/cpuinfo unreadable (macOS, Windows)
        ([(9, 0), (8, 0)], set(), "mixed_bfloat16"),
        ([(8, 0), (7, 5)], {"avx512_bf16"}, "float32"),  # the GPUs train, one without bf16
    ],
)
def test_auto_precision_is_bfloat16_only_where_the_hardware_has_it(
    gpus: list, flags: set, expected: str
) -> None:
    assert train_stage.auto_policy(gpus, frozenset(flags)) == expected


def test_cpu_flags_read_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\nbugs\t: x\n")
    assert train_stage.cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert train_stage.cpu_flags(tmp_path / "missing") == frozenset()


def test_a_bfloat16_head_trains_in_bfloat16_and_is_saved_in_float32(keras, tmp_path: Path) -> None:
    x, y = blobs(256, seed=1)
    train = {**TRAIN, "layers": [32], "dropout": 0.2, "precision": "mixed_bfloat16"}
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    assert model.get_layer("dense_1").compute_dtype == "bfloat16"
    assert model.get_layer("dense_1").kernel.dtype == "float32"
    assert model.get_layer("classes").compute_dtype == "float32"
    train_stage.fit_head(keras, model, (x, y), blobs(64, seed=2), train, tmp_path / "log")

    shipped = train_stage.float32_head(keras, model)
    assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}
    for a, b in zip(shipped.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x_test, _ = blobs(64, seed=3)
    p_bf16, p_f32 = (train_stage.head_probabilities(keras, m, x_test) for m in (model, shipped))
    assert not np.array_equal(p_bf16, p_f32), "the trained model did compute in bfloat16"
    np.testing.assert_allclose(p_f32, p_bf16, atol=0.02)
    np.testing.assert_array_equal(p_f32.argmax(1), p_bf16.argmax(1))

    save_model(shipped, tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_array_equal(train_stage.head_probabilities(keras, loaded, x_test), p_f32)


def test_a_float32_head_is_saved_as_it_is(keras) -> None:
    x, _ = blobs(32, seed=1)
    model = train_stage.build_head(keras, x, N_CLASSES, TRAIN)
    assert train_stage.float32_head(keras, model) is model


# --- Streaming from memory-mapped features (feature sets larger than memory) ---


def in_memory_dataset(x: np.ndarray, targets: np.ndarray, batch_size: int, seed: int):
    """The reference: every feature held as one tensor, each batch one ``tf.gather`` of it."""
    import tensorflow as tf

    features, labels = tf.constant(x), tf.constant(targets)
    return (
        train_stage.epoch_rows(tf, len(x), batch_size, seed)
        .map(lambda rows: (tf.gather(features, rows), tf.gather(labels, rows)))
        .prefetch(2)
    )


def test_every_epoch_is_a_new_seeded_permutation_of_the_rows(keras) -> None:
    import tensorflow as tf

    def two_epochs(seed: int) -> list[np.ndarray]:
        rows = train_stage.epoch_rows(tf, 100, 32, seed)
        return [np.concatenate([b.numpy() for b in rows]) for _ in range(2)]

    first, second = two_epochs(5)
    assert sorted(first) == sorted(second) == list(range(100))
    assert not np.array_equal(first, second), "each epoch its own order"
    assert all(np.array_equal(a, b) for a, b in zip(two_epochs(5), (first, second), strict=True))
    assert not np.array_equal(two_epochs(6)[0], first), "another seed, another order"


def memmapped(tmp_path: Path, name: str, array: np.ndarray) -> np.ndarray:
    np.save(tmp_path / name, array)
    mapped = np.load(tmp_path / name, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    return mapped


def test_feature_moments_are_numpys_bit_for_bit_in_any_chunking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(1000, 64)) * rng.lognormal(size=64) * 30).astype(np.float32)
    mapped = memmapped(tmp_path, "x.npy", x)
    expected = x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64)
    for rows in (1, 7, 999, 1000, 65_536):
        monkeypatch.setattr(train_stage, "MOMENT_ROWS", rows)
        mean, variance = train_stage.feature_moments(mapped)
        assert mean.dtype == variance.dtype == np.float64
        assert np.array_equal(mean, expected[0]) and np.array_equal(variance, expected[1])


def test_rows_read_from_the_file_are_the_mapped_rows(keras, tmp_path: Path) -> None:
    """``file_rows`` (pread, not the mapping): any order, runs of consecutive rows, none; only
    for a whole mapped float32 file. Predictions of a whole file's first rows are its slice's."""
    x, _ = blobs(50, seed=6)
    mapped = memmapped(tmp_path, "x.npy", x)
    read = train_stage.file_rows(mapped)
    for rows in ([7, 3, 4, 5, 49, 0, 1], list(range(50)), [12], []):
        rows = np.asarray(rows, dtype=np.int64)
        np.testing.assert_array_equal(read(rows), x[rows].reshape(len(rows), 8))
    assert train_stage.file_rows(mapped[10:]) is None and train_stage.file_rows(x) is None
    model = train_stage.build_head(keras, x, N_CLASSES, TRAIN)
    np.testing.assert_array_equal(
        train_stage.head_probabilities(keras, model, mapped, 30),
        train_stage.head_probabilities(keras, model, x[:30]),
    )


def test_streamed_batches_are_the_in_memory_batches(keras, tmp_path: Path) -> None:
    """Row for row, epoch after epoch (each epoch its own shuffle), from a memory-mapped file."""
    x, y = blobs(200, seed=3)
    mapped = memmapped(tmp_path, "x.npy", x)
    streamed = train_stage.train_dataset(mapped, y, N_CLASSES, 32, seed=5)
    reference = in_memory_dataset(x, train_stage.one_hot(y, N_CLASSES), 32, seed=5)
    epochs = 0
    for _ in range(2):
        pairs = list(zip(streamed, reference, strict=True))
        assert len(pairs) == 7  # 200 rows in batches of 32
        for (xs, ys), (xr, yr) in pairs:
            np.testing.assert_array_equal(xs.numpy(), xr.numpy())
            np.testing.assert_array_equal(ys.numpy(), yr.numpy())
        epochs += 1
    assert epochs == 2


def test_large_validation_sets_stream_in_chunks_with_the_same_rows(
    keras, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_stage, "STREAM_ROWS", 16)
    x, y = blobs(40, seed=4)
    batches = list(train_stage.validation_dataset(memmapped(tmp_path, "v.npy", x), y, N_CLASSES))
    assert [len(b[0]) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in batches]), train_stage.one_hot(y, N_CLASSES)
    )


def in_memory_head(keras, x, y, x_val, y_val, train: dict, log: Path):
    """The head trained as before streaming: numpy's moments, batches gathered from tensors."""
    import tensorflow as tf

    keras.utils.clear_session()  # the names Keras numbers (adam, adam_1, ...) start again
    keras.utils.set_random_seed(train["seed"])
    model = train_stage.build_head(keras, x, N_CLASSES, train)
    val = tf.data.Dataset.from_tensor_slices((x_val, train_stage.one_hot(y_val, N_CLASSES)))
    model.fit(
        in_memory_dataset(x, train_stage.one_hot(y, N_CLASSES), train["batch_size"], train["seed"]),
        validation_data=val.batch(len(x_val)).cache(),
        epochs=train["epochs"],
        shuffle=False,
        callbacks=train_stage.callbacks(keras, train, log),
        verbose=0,
    )
    return train_stage.float32_head(keras, model)


def test_a_head_trained_from_memory_mapped_features_is_byte_identical(
    keras, tmp_path: Path
) -> None:
    """The stage's streaming path (memory-mapped files) against the in-memory reference: the
    same saved head, byte for byte, and the same probabilities."""
    train = {**TRAIN, "layers": [24], "dropout": 0.3, "epochs": 4, "patience": 2}
    (x, y), (x_val, y_val) = blobs(150, seed=1, noise=2.0), blobs(40, seed=2, noise=2.0)
    assert np.array_equal(
        train_stage.feature_moments(x)[0], x.mean(axis=0, dtype=np.float64)
    )  # build_head's moments, as numpy computed them before streaming

    reference = in_memory_head(keras, x, y, x_val, y_val, train, tmp_path / "a.csv")
    save_model(reference, tmp_path / "reference.keras")

    keras.utils.clear_session()
    keras.utils.set_random_seed(train["seed"])
    mapped, mapped_val = memmapped(tmp_path, "x.npy", x), memmapped(tmp_path, "v.npy", x_val)
    model = train_stage.build_head(keras, mapped, N_CLASSES, train)
    train_stage.fit_head(keras, model, (mapped, y), (mapped_val, y_val), train, tmp_path / "b.csv")
    streamed = train_stage.float32_head(keras, model)
    save_model(streamed, tmp_path / "streamed.keras")

    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "reference.keras").read_bytes() == (tmp_path / "streamed.keras").read_bytes()
    np.testing.assert_array_equal(
        train_stage.head_probabilities(keras, streamed, mapped),
        train_stage.head_probabilities(keras, reference, x),
    )
