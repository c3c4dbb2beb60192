"""Scale-out figures: train's peak memory and epoch time by feature vectors; extract's start-up
and steady images/s, local vs Ray on 1 and 2 local nodes, on the same images.

``python -m bench.scale`` (100k and 1M 1,024-d vectors; extract on up to 4,096 64 px and 512
224 px images: 3 to 5 min on 2 cores) or ``--small`` writes ``bench/scale.json``. Each train
size runs in a fresh process (its own peak RSS); each extract engine is called cold, then on n1
and n2 images (``timed``); Ray rows are skipped, with the reason, where Ray is not installed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, child, epoch_timer, print_result, write_record
from stages.common.io import release_rows

DIM, N_CLASSES, EPOCHS = 1024, 10, 2
VECTORS, SMALL_VECTORS = (100_000, 1_000_000), (2_000, 20_000, 100_000)
# image size -> n1, n2 (``timed``); Ray at the first size only
EXTRACT, SMALL_EXTRACT = {64: (512, 4_096), 224: (128, 512)}, {64: (128, 1_024), 224: (128, 256)}


def write_features(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic float32 vectors + labels, 4,096 rows at a time, each chunk's pages handed
    back: the train child's peak RSS (``wait4``) starts from this process's peak at its start."""
    rng = np.random.default_rng(seed)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for lo in range(0, n, 4096):
        x[lo : lo + 4096] = rng.standard_normal((min(n, lo + 4096) - lo, DIM), np.float32)
        release_rows(x, lo, lo + 4096)
    del x  # the rows are in the page cache, for the child
    np.save(folder / "y.npy", rng.integers(0, N_CLASSES, n).astype(np.int32))
    np.save(folder / "xv.npy", rng.standard_normal((1000, DIM), np.float32))
    np.save(folder / "yv.npy", rng.integers(0, N_CLASSES, 1000).astype(np.int32))


def train_child(folder: Path) -> None:
    """In a fresh process: the stage's head on memory-mapped features; its best epoch time."""
    from stages import train as train_stage
    from stages.common.params import load_params
    from stages.common.tf import setup_keras

    train = {**load_params("train")["train"], "epochs": EPOCHS, "patience": 0}
    keras = setup_keras(train["seed"])
    x, y = np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "y.npy")
    xv, yv = np.load(folder / "xv.npy", mmap_mode="r"), np.load(folder / "yv.npy")
    model, timer = train_stage.build_head(keras, x, N_CLASSES, train), epoch_timer(keras)
    train_stage.fit_head(keras, model, (x, y), (xv, yv), train, folder / "log.csv", [timer])
    print_result({"epoch_s": min(timer.seconds)})


def train_row(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        write_features(Path(tmp), n)
        result, done = child("scale", "--train-child", tmp)
    row = {"vectors": n, "dim": DIM, "feature_bytes": n * DIM * 4, **result}
    return row | {"peak_rss_bytes": int(done.peak_rss_mb * 2**20)}


def timed(call, images: np.ndarray, sizes: tuple[int, int], cpus: int) -> tuple[dict, np.ndarray]:
    """``call`` (start-up included) on n1 images (cold), n1 and n2: wall times, rates, start-up."""
    seconds, out = [], None
    for n in (sizes[0], *sizes):
        start = time.perf_counter()
        out = call(images[:n])
        seconds.append(time.perf_counter() - start)
    rate = (sizes[1] - sizes[0]) / (seconds[2] - seconds[1])
    row = {"cpus": cpus, "images": list(sizes), "first_call_s": seconds[0], "call_s": seconds[1:]}
    per_cpu, startup = rate / cpus, seconds[1] - sizes[0] / rate
    return row | {"images_per_s": rate, "images_per_s_per_cpu": per_cpu, "startup_s": startup}, out


def extract_rows(sizes: dict[int, tuple[int, int]]) -> list[dict]:
    """Per engine and node count, the same images: local as the stage runs it (``cpu_streams``;
    start-up: building the extractor) at each size; Ray (start-up: the actor pool) at the first."""
    from stages import extract as stage
    from stages.common.params import load_params
    from stages.common.tf import setup_keras

    params = {**load_params("extract")["extract"], "weights": "random"}
    keras = setup_keras(params["seed"])
    import tensorflow as tf

    streams, strategy, cores = stage.cpu_streams(tf), tf.distribute.get_strategy(), os.cpu_count()

    def local(x: np.ndarray) -> np.ndarray:
        model, _ = stage.build_extractor(keras, params, x.shape[1])
        out = np.empty((len(x), int(model.output_shape[-1])), np.float32)
        forward = stage.make_forward(tf, model, strategy, streams)
        stage.compute_features(tf, forward, strategy, x, params["batch_size"], out)
        return out

    rows, runs = [], []
    for size, counts in sizes.items():
        x = np.random.default_rng(0).integers(0, 256, (counts[1], size, size, 3), dtype=np.uint8)
        row, features = timed(local, x, counts, cores or 1)
        rows.append({"engine": "local", "image_size": size, "nodes": 1, **row})
        runs.append((x, counts, features))
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return [*rows, {"engine": "ray", "skipped": "Ray is not installed (requirements-ray.txt)"}]
    from stages.common import ray_engine

    x, counts, reference = runs[0]
    weights = stage.build_extractor(keras, params, x.shape[1])[0].get_weights()
    per_node = max(1, (cores or 2) // 2)
    call = lambda x: ray_engine.features_of(x, params, x.shape[1], weights)  # noqa: E731
    for nodes in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=per_node)
        os.environ["RAY_ADDRESS"] = cluster.address
        connect_s = time.perf_counter()
        ray_engine.connect(ray)  # once per driver: not part of a call
        connect_s = time.perf_counter() - connect_s
        row, features = timed(call, x, counts, nodes * per_node)
        same = bool(np.array_equal(features, reference))
        extra = {"cpus_per_node": per_node, "connect_s": connect_s, "same_features": same}
        rows.append({"engine": "ray", "image_size": x.shape[1], "nodes": nodes} | row | extra)
        ray.shutdown()
        cluster.shutdown()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer vectors and images")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scale.json")
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        return train_child(Path(args.train_child))
    record = {
        "train": [train_row(n) for n in (SMALL_VECTORS if args.small else VECTORS)],
        "extract": extract_rows(SMALL_EXTRACT if args.small else EXTRACT),
        "gpu": "unmeasured: no GPU was lent to this run",
    }
    write_record(args.out, record, "scale", argv)


if __name__ == "__main__":
    main()
