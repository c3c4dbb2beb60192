"""Scale-out figures: train's peak memory and epoch time as the feature set grows, and extract's
images/s with the local engine vs Ray on 1 and 2 local nodes (the same images).

``python -m bench.scale`` (100k and 1M synthetic 1,024-d vectors; extract on 512 images) or
``python -m bench.scale --small`` (a quick check) writes ``bench/scale.json``. Each train size
runs in a fresh process (its own peak RSS); the Ray rows are skipped, with the reason in the
record, where Ray is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, child, epoch_timer, print_result, write_record

DIM, N_CLASSES, EPOCHS = 1024, 10, 2


def write_features(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic float32 vectors (written chunk by chunk: never all in memory) + labels."""
    rng = np.random.default_rng(seed)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for lo in range(0, n, 65_536):
        x[lo : lo + 65_536] = rng.normal(size=(min(n, lo + 65_536) - lo, DIM)).astype(np.float32)
    x.flush()
    del x
    np.save(folder / "y.npy", rng.integers(0, N_CLASSES, n).astype(np.int32))
    np.save(folder / "xv.npy", rng.normal(size=(1000, DIM)).astype(np.float32))
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
    return {
        "vectors": n,
        "dim": DIM,
        "feature_bytes": n * DIM * 4,
        **result,
        "peak_rss_bytes": int(done.peak_rss_mb * 2**20),
    }


def extract_rows(n_images: int, size: int) -> list[dict]:
    """images/s of the same images: local forward (one process) vs Ray with 1 and 2 nodes."""
    from stages import extract as extract_stage
    from stages.common.params import load_params
    from stages.common.tf import setup_keras

    params = {**load_params("extract")["extract"], "weights": "random"}
    x = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    keras = setup_keras(params["seed"])
    import tensorflow as tf

    model, _ = extract_stage.build_extractor(keras, params, size)
    forward = extract_stage.make_forward(tf, model, tf.distribute.get_strategy())
    batch = params["batch_size"]
    forward(x[:batch])  # trace once
    start = time.perf_counter()
    for lo in range(0, n_images, batch):
        forward(x[lo : lo + batch]).numpy()
    rows = [
        {"engine": "local", "nodes": 1, "images_per_s": n_images / (time.perf_counter() - start)}
    ]
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return [*rows, {"engine": "ray", "skipped": "Ray is not installed (requirements-ray.txt)"}]
    from stages.common import ray_engine

    cpus = max(1, (os.cpu_count() or 2) // 2)
    for nodes in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        os.environ["RAY_ADDRESS"] = cluster.address
        ray_engine.features_of(x[:batch], params, size, model.get_weights())  # actors start
        start = time.perf_counter()
        ray_engine.features_of(x, params, size, model.get_weights())
        seconds = time.perf_counter() - start
        rows.append(
            {
                "engine": "ray",
                "nodes": nodes,
                "cpus_per_node": cpus,
                "images_per_s": n_images / seconds,
            }
        )
        ray.shutdown()
        cluster.shutdown()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="2k and 20k vectors, 64 images")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scale.json")
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        return train_child(Path(args.train_child))
    record = {
        "train": [train_row(n) for n in ((2_000, 20_000) if args.small else (100_000, 1_000_000))],
        "extract": extract_rows(64 if args.small else 512, 64),
        "gpu": "unmeasured: no GPU was lent to this run",
    }
    write_record(args.out, record, "scale", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
