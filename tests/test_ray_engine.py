"""extract.engine: ray on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster:
a head and a second node, each its own raylet with one CPU slot). Skipped, with the reason,
where Ray is not installed (pip install -r requirements-ray.txt); the missing-Ray error is
tested there instead."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import threading
import time

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, run

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed: requirements-ray.txt")

SIZE = 32
PARAMS = {
    "weights": "random",
    "layer": "conv4_block6_out",
    "pooling": "avg",
    "batch_size": 8,
    "precision": "float32",
    "seed": 42,
    "engine": "ray",
}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each; the driver (this process) joins it."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    os.environ["RAY_ADDRESS"] = nodes.address
    yield nodes
    import ray

    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    # A worker the fault test killed may already be gone when the cluster stops its processes.
    with contextlib.suppress(ProcessLookupError, ValueError):
        nodes.shutdown()


def local_features(x: np.ndarray) -> np.ndarray:
    """What the local forward computes: each batch padded to extract.batch_size."""
    from stages import extract
    from stages.common.tf import setup_keras

    keras = setup_keras(42)
    import tensorflow as tf

    model, _ = extract.build_extractor(keras, PARAMS, SIZE)
    forward = extract.make_forward(tf, model, tf.distribute.get_strategy(), 1)
    batch = PARAMS["batch_size"]
    out = []
    for lo in range(0, len(x), batch):
        padded = np.zeros((batch, SIZE, SIZE, 3), np.uint8)
        n = len(x[lo : lo + batch])
        padded[:n] = x[lo : lo + batch]
        out.append(forward(padded).numpy()[:n])
    return np.concatenate(out)


@needs_ray
def test_two_nodes_compute_the_local_features_byte_for_byte_in_order(cluster) -> None:
    import ray

    from stages.common import ray_engine

    x = images(20)
    got = ray_engine.features_of(x, PARAMS, SIZE)
    assert len(ray.nodes()) == 2
    assert got.dtype == np.float32 and got.shape == (20, 1024)
    assert np.array_equal(got, local_features(x))


def actor_processes() -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "FeatureActor" in cmdline and process.pid != os.getpid():
            found.append(process)
    return found


@needs_ray
def test_an_actor_killed_mid_run_costs_a_retry_not_a_feature(cluster) -> None:
    from stages.common import ray_engine

    x = images(160, seed=1)
    result: dict = {}

    def extract() -> None:
        result["features"] = ray_engine.features_of(x, PARAMS, SIZE)

    worker = threading.Thread(target=extract)
    worker.start()
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        actors = actor_processes()
        if actors:
            time.sleep(3)  # the actor has its model and is working through batches
            killed = actors[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    worker.join(timeout=180)
    assert killed is not None, "no actor process was seen to kill"
    assert np.array_equal(result["features"], local_features(x))


@pytest.mark.skipif(HAS_RAY, reason="Ray is installed here: the missing-Ray error needs no Ray")
def test_engine_ray_without_ray_is_a_one_line_error(tmp_path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["extract"]["engine"] = "ray"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(REPO_ROOT)}
    result = run(["python", "-m", "stages.extract"], tmp_path, check=False, env=env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("ERROR:") and "requirements-ray.txt" in lines[-1]
    assert "Traceback" not in result.stderr
