"""Measurements that run in a fresh Python process each: ``python -m bench.probes NAME JSON``.

Each probe prints one line ``BENCH_RESULT {...}`` (its figures as JSON) at the end. A fresh
process per probe means a clean TensorFlow runtime (thread pools, mixed-precision policy,
memory) and honest import costs. Timings interleave the things they compare and keep the best
of a few repetitions, so that a machine whose speed drifts still gives fair ratios.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stages.common import paths

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULT_PREFIX = "BENCH_RESULT "
ROOT = Path(__file__).resolve().parents[1]
SGEMM_N = 2048


def best_of(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Run every function once to warm up, then ``reps`` interleaved rounds; best seconds each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def conv_dense_flops(keras, model) -> int:
    """Multiply-adds x 2 of every Conv2D and Dense layer for one image (what the FLOP count means).

    Conv2D: ``2 * kh * kw * cin * cout * hout * wout``; Dense: ``2 * inputs * outputs``. Padding,
    pooling, additions and activations are left out (a few % of the total).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, hout, wout, _ = layer.output.shape
            total += 2 * kh * kw * cin * cout * hout * wout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def sgemm_functions(tf, streams: int = 1) -> dict[str, Callable[[], Any]]:
    """Float32 2048x2048 matmuls through TensorFlow and through numpy (OpenBLAS).

    With ``streams`` > 1 (this process's TensorFlow runs one single-threaded stream per core,
    ``extract.cpu_streams``) the TensorFlow function runs ``streams`` independent matmuls side by
    side, as extract runs its sub-batches: one matmul alone would run on one core there and
    understate the limit. Time it per matmul with ``gflops(seconds, streams)``.
    """
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32) for _ in range(2))
    pairs = [(tf.constant(a), tf.constant(b)) for _ in range(streams)]

    @tf.function
    def matmuls():
        return [tf.linalg.matmul(x, y) for x, y in pairs]

    return {
        "sgemm_tf": lambda: [c.numpy() for c in matmuls()],
        "sgemm_numpy": lambda: a @ b,
    }


def gflops(seconds: float, matmuls: int = 1) -> float:
    """The rate of ``matmuls`` 2048x2048 float32 matmuls done in ``seconds``."""
    return matmuls * 2 * SGEMM_N**3 / seconds / 1e9


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def stage_params(precision: str = "float32") -> dict:
    """params.yaml's ``extract`` section (layer, pooling, batch) with ImageNet weights."""
    import yaml

    params = yaml.safe_load((ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))["extract"]
    return {**params, "weights": "imagenet", "precision": precision}


def plain_model(keras, size: int):
    """The seed's extractor: ResNet50 cut at ``extract.layer`` + global pooling, nothing else."""
    from stages.common.weights import load_resnet50

    p = stage_params()
    base, _ = load_resnet50(p["weights"], size, p["seed"])
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    return keras.Model(base.input, pool[p["pooling"]]()(base.get_layer(p["layer"]).output))


def project_extractor(keras, tf, size: int, precision: str = "float32", streams: int = 1):
    """The extract stage's model, compiled forward pass and strategy (stages.extract); pass the
    stage's ``streams`` (``extract.cpu_streams``, called first thing in the process)."""
    from stages import extract

    keras.mixed_precision.set_global_policy(precision)
    strategy = extract.make_strategy(tf)
    with strategy.scope():
        model, _ = extract.build_extractor(keras, stage_params(precision), size)
    keras.mixed_precision.set_global_policy("float32")
    return model, extract.make_forward(tf, model, strategy, streams), strategy


def project_run(tf, model, forward, strategy, images: np.ndarray, batch_size: int, out: Path):
    """One pass of the stage's own path: tf.data batches -> forward -> memory-mapped .npy."""
    from stages import extract
    from stages.common.io import npy_writer

    dataset = extract.image_dataset(tf, [images], batch_size, strategy)
    shape = (len(images), model.output_shape[-1])
    with npy_writer(out / "features.npy", shape, np.float32) as features:
        extract.write_features(forward, dataset, features)


def probe_import() -> dict:
    start = time.perf_counter()
    import tensorflow  # noqa: F401

    return {"import_s": time.perf_counter() - start}


def probe_extract_speed(
    size: int,
    images: int,
    reps: int,
    batch_size: int,
    one_stream: bool = False,
) -> dict:
    """Stage path vs plain ``model.predict`` at one image size, with a matmul run in between.

    The stage path is the stage's own: one single-threaded stream per core (``cpu_streams``),
    or with ``one_stream`` one stream over TensorFlow's default thread pools (as before issue
    16). ``model.predict`` runs on the same pools. The limit is the faster of TensorFlow's
    matmul on the same threads (one single-threaded matmul per stream, side by side:
    ``sgemm_functions``) and numpy's, whose OpenBLAS keeps its own threads, one per core."""
    from stages import extract
    from stages.common.io import load_npy, save_npy
    from stages.common.resnet50 import to_model_input
    from stages.common.tf import setup_keras

    keras = setup_keras(42)
    import tensorflow as tf

    streams = 1 if one_stream else extract.cpu_streams(tf)
    plain = plain_model(keras, size)
    model, forward, strategy = project_extractor(keras, tf, size, streams=streams)
    with tempfile.TemporaryDirectory() as tmp:
        save_npy(Path(tmp) / "images.npy", synthetic_images(images, size))
        x = load_npy(Path(tmp) / "images.npy", mmap=True)
        fns = sgemm_functions(tf, streams)
        fns["project"] = lambda: project_run(tf, model, forward, strategy, x, batch_size, Path(tmp))
        fns["predict"] = lambda: plain.predict(to_model_input(np.asarray(x)), verbose=0)
        best = best_of(fns, reps)
    flops = conv_dense_flops(keras, model)
    sgemm = max(gflops(best["sgemm_tf"], streams), gflops(best["sgemm_numpy"]))
    result = {
        "size": size,
        "layer": stage_params()["layer"],
        "images": images,
        "batch_size": batch_size,
        "streams": streams,
        "flops_per_image": flops,
        "sgemm_tf_gflops": gflops(best["sgemm_tf"], streams),
        "sgemm_numpy_gflops": gflops(best["sgemm_numpy"]),
        "sgemm_gflops": sgemm,
        "project_images_per_s": images / best["project"],
        "predict_images_per_s": images / best["predict"],
    }
    result["fraction_of_limit"] = result["project_images_per_s"] * flops / (sgemm * 1e9)
    result["predict_fraction_of_limit"] = result["predict_images_per_s"] * flops / (sgemm * 1e9)
    return result


def head_timer(keras):
    """A callback recording, per epoch, the seconds spent training and validating."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.train_s: list[float] = []
            self.epoch_s: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.start = time.perf_counter()
            self.validation_start = None

        def on_test_begin(self, logs=None) -> None:
            if getattr(self, "start", None) is not None:
                self.validation_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            end = time.perf_counter()
            self.epoch_s.append(end - self.start)
            self.train_s.append((self.validation_start or end) - self.start)
            self.start = None

    return EpochTimer()


def head_flops_per_epoch(
    x_dim: int, layers: list[int], n_classes: int, n_train: int, n_val: int
) -> int:
    """Matmul FLOPs of one head epoch: forward + two backward matmuls per Dense layer on the
    training vectors, one forward on the val vectors (the Adam update and the rest left out)."""
    widths = [x_dim, *layers, n_classes]
    per_vector = sum(2 * a * b for a, b in itertools.pairwise(widths))
    return 3 * per_vector * n_train + per_vector * n_val


def probe_head_floor(repo: str, epochs: int, variants: dict[str, dict]) -> dict:
    """Epoch seconds of the head inside one ``fit`` as stages/train.py runs it (``fit_head``:
    its input pipeline, CSV log and validation), against its matmul floor at this process's
    measured float32 matmul rate. Each variant overrides some ``train`` params (e.g. a larger
    batch with the learning rate scaled); early stopping is off so every epoch is timed; the
    first epoch (tracing) is dropped; median of the rest."""
    from stages import train as train_stage
    from stages.common.tf import setup_keras

    repo_path = Path(repo)
    train = yaml.safe_load((repo_path / paths.PARAMS_FILE).read_text(encoding="utf-8"))["train"]
    keras = setup_keras(train["seed"])
    import tensorflow as tf

    x, y = (
        np.load(repo_path / paths.features("train")),
        np.load(repo_path / paths.feature_labels("train")),
    )
    xv, yv = (
        np.load(repo_path / paths.features("val")),
        np.load(repo_path / paths.feature_labels("val")),
    )
    n_classes = int(max(y.max(), yv.max())) + 1
    sgemm = best_of({"sgemm": sgemm_functions(tf)["sgemm_tf"]}, reps=5)["sgemm"]
    rate = 2 * SGEMM_N**3 / sgemm
    flops = head_flops_per_epoch(x.shape[1], train["layers"], n_classes, len(x), len(xv))
    result: dict[str, Any] = {
        "sgemm_gflops": rate / 1e9,
        "head_flops_per_epoch": flops,
        "floor_s": flops / rate,
        "epochs": epochs,
        "train_vectors": len(x),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in variants.items():
            config = {**train, **overrides, "epochs": epochs, "patience": 0}
            model = train_stage.build_head(keras, x, n_classes, config)
            timer = head_timer(keras)
            train_stage.fit_head(
                keras, model, (x, y), (xv, yv), config, Path(tmp) / "log.csv", extra=[timer]
            )
            epoch_s = float(np.median(timer.epoch_s[1:]))
            result[name] = {"epoch_s": epoch_s, "over_floor": epoch_s / result["floor_s"]}
    return result


PROBES = {
    "import": probe_import,
    "head_floor": probe_head_floor,
    "extract_speed": probe_extract_speed,
}


def main(argv: list[str]) -> None:
    name, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    result = PROBES[name](**kwargs)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
