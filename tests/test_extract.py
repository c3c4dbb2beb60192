"""The extract stage computes what a plain ResNet50 + pooling computes, however it gets there.

Its speed-ups (BatchNormalization folded into the convolutions, preprocessing inside a compiled
function, tf.data prefetching, batches split over devices, pages released as they are written)
must not change the features beyond float32 rounding, nor the stage's files.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run

from stages import extract
from stages.common import paths
from stages.common.io import load_npy, npy_writer, open_npy_memmap, save_npy
from stages.common.resnet50 import to_model_input
from stages.common.tf import setup_keras
from stages.common.weights import load_resnet50

SIZE = 32


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    """ResNet50 weights whose batch normalizations do something (random init's are identities),
    so that folding them into the convolutions is really tested."""
    keras = setup_keras(42)
    base, _ = load_resnet50("random", SIZE, 42)
    rng = np.random.default_rng(0)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n)
            layer.set_weights([gamma, beta, rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)])
    path = tmp_path_factory.mktemp("weights") / "resnet50_bn.weights.h5"
    with warnings.catch_warnings():  # Keras' h5 writer trips numpy 2's __array__(copy=) notice
        warnings.simplefilter("ignore", DeprecationWarning)
        base.save_weights(path)
    return str(path)


def params(pooling: str = "avg", layer: str = "conv5_block3_out", weights: str = "random") -> dict:
    return {
        "weights": weights,
        "layer": layer,
        "pooling": pooling,
        "batch_size": 8,
        "precision": "float32",
        "seed": 42,
    }


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def plain_features(keras, p: dict, x: np.ndarray) -> np.ndarray:
    """The reference: ResNet50 cut at the layer, global pooling, ``model.predict``."""
    base, _ = load_resnet50(p["weights"], SIZE, p["seed"])
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    model = keras.Model(base.input, pool[p["pooling"]]()(base.get_layer(p["layer"]).output))
    return model.predict(to_model_input(x), verbose=0)


def assert_same_features(got: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("pooling", "layer"), [("avg", "conv5_block3_out"), ("max", "conv4_block6_out")]
)
def test_streamed_features_equal_plain_predict(tmp_path, weights_file, pooling, layer):
    """Two memory-mapped arrays (13 + 6 images, batch 8: batches cross the arrays, the last is
    partial) streamed into a memory-mapped .npy equal model.predict on the same images."""
    keras = setup_keras(42)
    import tensorflow as tf

    p = params(pooling, layer, weights_file)
    first, second = images(13, seed=1), images(6, seed=2)
    save_npy(tmp_path / "a.npy", first)
    save_npy(tmp_path / "b.npy", second)
    arrays = [load_npy(tmp_path / "a.npy", mmap=True), load_npy(tmp_path / "b.npy", mmap=True)]
    strategy = extract.make_strategy(tf)
    model, _ = extract.build_extractor(keras, p, SIZE)
    forward = extract.make_forward(tf, model, strategy)
    with npy_writer(tmp_path / "features.npy", (19, model.output_shape[-1]), np.float32) as out:
        extract.write_features(forward, extract.image_dataset(tf, arrays, 8, strategy), out)
    got = load_npy(tmp_path / "features.npy")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert_same_features(got, plain_features(keras, p, np.concatenate([first, second])))


def test_padded_batches_cross_arrays_in_order_and_all_have_the_batch_size(tmp_path):
    save_npy(tmp_path / "a.npy", images(5, seed=3))
    arrays = [load_npy(tmp_path / "a.npy", mmap=True), images(6, seed=4)]
    rows = extract.Rows(arrays, np.arange(11))
    batches = list(extract.padded_batches(rows, 4))
    assert [len(b) for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(np.concatenate(batches)[:11], np.concatenate(arrays))
    assert not np.concatenate(batches)[11:].any()  # the padding is black
    picked = extract.Rows(arrays, np.array([7, 0, 10]))
    np.testing.assert_array_equal(picked[0:3], np.concatenate(arrays)[[7, 0, 10]])


def test_released_rows_keep_their_data(tmp_path):
    """Pages handed back to the OS after writing still hold the rows, in memory and on disk."""
    rows = np.arange(3000 * 2048, dtype=np.float32).reshape(3000, 2048)
    out = open_npy_memmap(tmp_path / "f.npy", rows.shape, np.float32)
    for lo in range(0, len(rows), 256):
        out[lo : lo + 256] = rows[lo : lo + 256]
        extract.release_rows(out, lo, lo + 256)
    np.testing.assert_array_equal(out, rows)
    out.flush()
    del out
    np.testing.assert_array_equal(load_npy(tmp_path / "f.npy"), rows)


def test_mixed_bfloat16_features_are_float32_and_close():
    keras = setup_keras(42)
    import tensorflow as tf

    x = images(8, seed=5)
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model, _ = extract.build_extractor(keras, params(), SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    got = extract.make_forward(tf, model, extract.make_strategy(tf))(x)
    assert got.dtype == tf.float32
    expected = plain_features(keras, params(), x)
    assert np.abs(got.numpy() - expected).max() < 0.05 * np.abs(expected).max()


def run_script_in_fresh_process(script: str, marker: str) -> None:
    """Runs ``script`` in a new Python (TensorFlow's devices and thread pools are fixed once it
    has started) and checks that it got as far as printing ``marker``."""
    result = run(
        [sys.executable, "-c", textwrap.dedent(script)],
        REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT)},
        timeout=600,
    )
    assert marker in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


MIRRORED = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from stages import extract
from stages.common.tf import setup_keras
keras = setup_keras(42)
p = {"weights": "random", "layer": "conv5_block3_out", "pooling": "avg", "batch_size": 4,
     "precision": "float32", "seed": 42}
x = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
single = extract.make_strategy(tf, ["/cpu:0"])
model, _ = extract.build_extractor(keras, p, 32)
expected = extract.make_forward(tf, model, single)(x).numpy()
mirrored = extract.make_strategy(tf, ["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
with mirrored.scope():
    model, _ = extract.build_extractor(keras, p, 32)
out = np.zeros((11, 2048), np.float32)
forward = extract.make_forward(tf, model, mirrored)
extract.write_features(forward, extract.image_dataset(tf, [x], 8, mirrored), out)
np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
print("MIRRORED OK")
"""


def test_mirrored_strategy_splits_batches_and_keeps_order():
    """Two logical CPUs stand in for two GPUs: each gets half of every batch (11 images in
    batches of 8: 4+4, then 2+1), and the gathered features come back in image order."""
    run_script_in_fresh_process(MIRRORED, "MIRRORED OK")


STREAMS = """
import os, numpy as np, tensorflow as tf
from stages import extract
from stages.common.tf import setup_keras
keras = setup_keras(42)
assert extract.cpu_streams(tf) == len(os.sched_getaffinity(0))
assert tf.config.threading.get_intra_op_parallelism_threads() == 1
assert tf.config.threading.get_inter_op_parallelism_threads() == len(os.sched_getaffinity(0))
p = {"weights": "random", "layer": "conv4_block3_out", "pooling": "avg", "batch_size": 8,
     "precision": "float32", "seed": 42}
x = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
strategy = extract.make_strategy(tf)
model, _ = extract.build_extractor(keras, p, 32)
one = extract.make_forward(tf, model, strategy)
three = extract.make_forward(tf, model, strategy, streams=3)
for n in (12, 8, 2, 1):  # 4+4+4; 8 and smaller than 3 are padded to a multiple of 3
    expected, got = one(x[:n]).numpy(), three(x[:n]).numpy()
    assert got.shape == expected.shape == (n, 1024), got.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
print("STREAMS OK", "identical" if np.array_equal(three(x).numpy(), one(x).numpy()) else "close")
"""


def test_cpu_streams_give_the_one_stream_features_in_order():
    """A fresh process: ``cpu_streams`` gives one single-threaded stream per core; a batch cut
    into 3 sub-batches (padded when its size is no multiple of 3) gives the same features,
    in image order, as one pass over the whole batch."""
    run_script_in_fresh_process(STREAMS, "STREAMS OK")


STARTED = """
import tensorflow as tf
from stages import extract
tf.constant(1.0) + 1  # the runtime starts with TensorFlow's default thread pools
assert extract.cpu_streams(tf) == 1
assert tf.config.threading.get_intra_op_parallelism_threads() == 0  # the default, untouched
print("STARTED OK")
"""


def test_cpu_streams_keep_one_stream_once_tensorflow_has_started():
    """Pools are fixed when the runtime starts: ``cpu_streams`` then leaves them as they are
    and the forward pass runs as one stream (what bench's one-stream figures rely on)."""
    run_script_in_fresh_process(STARTED, "STARTED OK")


def write_split(folder: Path) -> dict[str, np.ndarray]:
    data = {"train": images(9, 6), "val": images(5, 7), "test": images(4, 8)}
    for name, x in data.items():
        save_npy(folder / paths.split_images(name), x)
        save_npy(folder / paths.split_labels(name), np.arange(len(x), dtype=np.int32) % 3)
    save_npy(folder / paths.AUGMENTED_IMAGES, images(9, 9))
    save_npy(folder / paths.AUGMENTED_LABELS, np.arange(9, dtype=np.int32) % 3)
    return data


def test_stage_writes_the_same_files_and_predict_reproduces_them(tmp_path):
    """``python -m stages.extract``: the files, their shapes and info.json's keys; the saved
    extractor (loaded in safe mode, as predict does) gives the cached features back."""
    import yaml

    data = write_split(tmp_path)
    all_params = yaml.safe_load((REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))
    all_params["extract"].update(weights="random", batch_size=4)
    (tmp_path / paths.PARAMS_FILE).write_text(yaml.safe_dump(all_params), encoding="utf-8")
    run([sys.executable, "-m", "stages.extract"], tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})

    features = tmp_path / paths.FEATURES_DIR
    assert sorted(p.name for p in features.iterdir()) == sorted(
        [
            f"{s}_{kind}.npy"
            for s in ("train", "val", "test")
            for kind in ("features", "labels", "index")  # index: the store's (store.py)
        ]
        + ["info.json"]
    )
    counts = {"train": 18, "val": 5, "test": 4}
    keras = setup_keras()
    saved = keras.saving.load_model(tmp_path / paths.EXTRACTOR, safe_mode=True)
    dim = saved.output_shape[-1]
    for split, n in counts.items():
        x = load_npy(tmp_path / paths.features(split))
        assert x.shape == (n, dim) and x.dtype == np.float32
        assert load_npy(tmp_path / paths.feature_labels(split)).shape == (n,)
    info = json.loads((tmp_path / paths.FEATURES_INFO).read_text())
    assert list(info) == ["weights", "layer", "pooling", "image_size", "feature_dim", "images"]
    assert info["images"] == counts and info["feature_dim"] == dim and info["image_size"] == SIZE

    again = saved.predict(to_model_input(data["val"]), verbose=0)
    assert_same_features(again, load_npy(features / "val_features.npy"))
    train_images = np.concatenate([data["train"], images(9, 9)])
    expected = plain_features(keras, all_params["extract"], train_images)
    assert_same_features(load_npy(features / "train_features.npy"), expected)


def test_saved_extractor_does_not_depend_on_what_the_process_built_before(tmp_path):
    """The extractor's ``.keras`` bytes are the same whatever Keras built earlier in the process.

    Keras names an unnamed input after a process-wide tensor counter (``keras_tensor_350``), so a
    run that first converted the npm weights (building other models) saved a different file than
    one that found them cached: same features, new md5 in dvc.lock.
    """
    from stages.common.io import save_model

    keras = setup_keras(42)
    first, _ = extract.build_extractor(keras, params(), SIZE)
    save_model(first, tmp_path / "first.keras")
    for _ in range(3):
        keras.Input((4,))
    second, _ = extract.build_extractor(keras, params(), SIZE)
    save_model(second, tmp_path / "second.keras")
    assert (tmp_path / "first.keras").read_bytes() == (tmp_path / "second.keras").read_bytes()
