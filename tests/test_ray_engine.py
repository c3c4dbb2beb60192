"""extract.engine: ray on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster:
a head and a second node, each its own raylet with one CPU slot). Skipped, with the reason,
where Ray is not installed (pip install -r requirements-ray.txt); the missing-Ray error is
tested there instead."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, command_env, run, write_params

from stages.common import paths

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
        if cmdline.startswith("ray::") and "FeatureActor" in cmdline:
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


def no_actors_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while actor_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def features_written(repo: Path) -> bool:
    """Some feature rows from the actor pool are in extract's scratch file (so more to come)."""
    for scratch in (repo / paths.FEATURES_DIR).glob(".scratch-*.npy"):
        with contextlib.suppress(OSError, ValueError):  # not yet sized, or already gone
            if np.load(scratch, mmap_mode="r").any():
                return True
    return False


def stage_outputs(repo: Path) -> dict[str, str]:
    """sha256 of everything extract writes (data/features/*, the saved extractor)."""
    files = [*sorted((repo / paths.FEATURES_DIR).glob("*")), repo / paths.EXTRACTOR]
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file()
    }


def temp_files(repo: Path) -> list[str]:
    """The stages' half-written files (``.tmp-*``, ``.scratch-*``), DVC's and git's dirs aside."""
    return sorted(
        str(p.relative_to(repo))
        for p in repo.rglob("*")
        if p.name.startswith((".tmp-", ".scratch-"))
        and p.relative_to(repo).parts[0] not in (".dvc", ".git")
    )


@needs_ray
@pytest.mark.slow
def test_ctrl_c_on_the_ray_driver_leaves_no_output_and_a_rerun_matches_local(
    cluster, pipeline_repo, tmp_path
) -> None:
    """SIGINT to the extract stage (the Ray driver) once the actor pool's first features are in
    its scratch file: the one-line interrupt, exit 130, no output or temp file (what the local
    engine guarantees, tests/test_faults.py), no actor left; then a rerun on Ray computes every
    image and writes the bytes a local-engine run writes."""
    assert no_actors_within(60), "actors of an earlier test are still running"
    repo = pipeline_repo
    write_params(repo, {"extract.engine": "ray", "data.max_per_class": 100})
    run(["dvc", "repro", "augment"], repo)  # split and augment: extract's inputs
    log = tmp_path / "sigint.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "stages.extract"],
            cwd=repo,
            env=command_env(),  # RAY_ADDRESS: the module's two-node cluster
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while not features_written(repo) and driver.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.02)
            driver.send_signal(signal.SIGINT)
            code = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    output = log.read_text()
    assert code == 130, output[-4000:]
    # Ray's driver prints the raylet's warnings about the actors it kills ("(raylet) Task ...")
    # from a thread of its own, so one may come after the stage's last line.
    lines = [line for line in output.splitlines() if line.strip()]
    ours = [line for line in lines if not line.startswith("(raylet) ")]
    assert ours[-1] == "Interrupted: no output of this stage was written.", output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert stage_outputs(repo) == {} and temp_files(repo) == []
    assert no_actors_within(60), "an actor outlived the interrupted driver"

    rerun = run([sys.executable, "-m", "stages.extract"], repo)
    assert re.search(r"extract: computed [1-9]\d* image\(s\), 0 from the store", rerun.stdout)
    on_ray = stage_outputs(repo)
    assert len(on_ray) == 11 and temp_files(repo) == []  # 3 splits x 3 arrays, info.json, model
    for path in on_ray:
        (repo / path).unlink()
    write_params(repo, {"extract.engine": "local"})
    run([sys.executable, "-m", "stages.extract"], repo)
    assert stage_outputs(repo) == on_ray
