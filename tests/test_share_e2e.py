"""The user's images under DVC, shared through a real S3-protocol remote, on two "machines".

A moto S3 server runs on 127.0.0.1 (a free port) for this module. Machine A is a scratch clone
with its own HOME and KERAS_HOME; it tracks its images with ``dvc add data/raw`` (README: Your
own images), runs the pipeline, a queued sweep of heads, ``dvc push`` and pushes git to a bare
repository. Machine B is another clone with an empty HOME and KERAS_HOME and no weights at all:
it pulls, finds everything up to date, and trains heads only (``dvc exp run evaluate``: the
export stage is left for the head one picks). Credentials come from environment
variables, never from a committed file.

The tests share machine A and run in file order (the first one tracks the images and builds).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    TINY_PARAMS,
    copy_project,
    git_commit,
    git_status,
    run,
    write_images,
    write_params,
)

from tools.scratch import stages_run

pytestmark = pytest.mark.slow
PIPELINE = {
    "split",
    "augment",
    "extract",
    "train",
    "evaluate",
    "export",
    "baselines_pixels",
    "baselines_features",
}
BUCKET = "pipeline-remote"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "id-from-the-environment",
    "AWS_SECRET_ACCESS_KEY": "secret-from-the-environment",
}
QUEUE_TIMEOUT = 900  # seconds for the whole queue; a tiny experiment takes well under a minute


@dataclass
class World:
    root: Path
    a: Path
    env_a: dict[str, str]
    weights: Path  # on machine A only: B has no route to any weights
    endpoint: str


def machine_env(home: Path) -> dict[str, str]:
    """One machine: its own HOME and KERAS_HOME, S3 credentials from the environment only."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "KERAS_HOME": str(home / ".keras"),
        "RESNET50_IMAGENET_WEIGHTS": str(home / "no-such-weights.h5"),
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "GIT_AUTHOR_NAME": home.name,
        "GIT_AUTHOR_EMAIL": f"{home.name}@example.invalid",
        "GIT_COMMITTER_NAME": home.name,
        "GIT_COMMITTER_EMAIL": f"{home.name}@example.invalid",
        **CREDENTIALS,
    }


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-protocol server (moto) on 127.0.0.1 with an empty bucket; stopped at the end."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **s3_keys()).create_bucket(
        Bucket=BUCKET
    )
    yield endpoint
    server.stop()


def s3_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> World:
    """Machine A: the project committed, the user's images copied into data/raw (not tracked
    yet), and a weights file that exists on A only."""
    root = tmp_path_factory.mktemp("share")
    a = root / "a"
    a.mkdir()
    copy_project(a)
    env_a = machine_env(root / "home-a")
    weights = root / "home-a" / "resnet50_notop.weights.h5"
    write_params(
        a,
        TINY_PARAMS
        | {"data.source": "folder", "data.folder": "data/raw", "extract.weights": str(weights)},
    )
    git_commit(a, "project, images in data/raw", init=True)
    write_images(a / "data" / "raw", {"circle": 8, "square": 8}, size=24)
    run(
        [
            "python",
            "-c",
            "import sys, keras; keras.utils.set_random_seed(7); keras.applications.ResNet50("
            "include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(sys.argv[1])",
            str(weights),
        ],
        a,
        env=env_a,
    )
    return World(root, a, env_a, weights, s3_endpoint)


def track_and_build(world: World) -> None:
    """The README's steps on A: the images under DVC, committed, then the whole pipeline."""
    a, env = world.a, world.env_a
    if not (a / "data" / "raw.dvc").exists():
        run(["git", "rm", "-q", "data/raw/.gitkeep"], a)
        run(["dvc", "add", "data/raw"], a, env=env)
        run(["git", "add", "data/raw.dvc", "data/.gitignore"], a)
        git_commit(a, "images under DVC")
    if "Data and pipelines are up to date" not in run(["dvc", "status"], a, env=env).stdout:
        result = run(["dvc", "repro"], a, env=env)
        assert set(stages_run(result.stdout + result.stderr)) == PIPELINE
        git_commit(a, "first run")


def run_queue(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """``dvc queue start -j 1``, then poll ``dvc queue status`` until every task has ended and
    the worker is gone; return {experiment name: final status}."""
    run(["dvc", "queue", "start", "-j", "1"], repo, env=env)
    deadline = time.monotonic() + QUEUE_TIMEOUT
    while time.monotonic() < deadline:
        text = run(["dvc", "queue", "status"], repo, env=env).stdout
        tasks = {
            line.split()[1]: line.split()[-1]
            for line in text.splitlines()
            if re.match(r"^[0-9a-f]{7}\s", line)
        }
        if tasks and set(tasks.values()) <= {"Success", "Failed"} and "0 active" in text:
            return tasks
        time.sleep(3)
    pytest.fail(f"the queue did not finish within {QUEUE_TIMEOUT}s:\n{text}")


def queue_log(repo: Path, env: dict[str, str], name: str) -> str:
    result = run(["dvc", "queue", "logs", name], repo, env=env)
    return result.stdout + result.stderr


def experiments(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """{name: data} of every experiment of the workspace's baseline, from ``dvc exp show``."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env=env).stdout)
    found = {}
    for commit in shown[1:]:
        for group in commit.get("experiments") or []:
            for rev in group["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_queued_sweep_sees_the_images_once_dvc_tracks_them_and_trains_heads_only(world):
    a, env = world.a, world.env_a
    # Images copied in but neither committed nor tracked: the queued run says so.
    run(["dvc", "exp", "run", "--queue", "-S", "train.dropout=0.2"], a, env=env)
    (name, status), *_ = run_queue(a, env).items()
    assert status == "Failed"
    log = queue_log(a, env, name)
    assert "data.folder 'data/raw' holds no images in this copy of the repository" in log, log
    assert "neither committed nor tracked by DVC" in log and "dvc add 'data/raw'" in log
    assert "has no class sub-folders" not in log
    run(["dvc", "queue", "remove", "--all"], a, env=env)

    track_and_build(world)
    run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "evaluate",  # heads only: export (SavedModel, TFLite) waits for the one picked
            "-S",
            "train.layers=[16],[32]",
            "-S",
            "train.dropout=0.2",
        ],
        a,
        env=env,
    )
    tasks = run_queue(a, env)
    assert sorted(tasks.values()) == ["Success"] * 2, tasks
    for name in tasks:
        assert set(stages_run(queue_log(a, env, name))) == {"train", "evaluate"}, name

    found = experiments(a, env)
    grid = sorted(
        (
            d["params"]["params.yaml"]["data"]["train"]["layers"][0],
            d["params"]["params.yaml"]["data"]["train"]["dropout"],
        )
        for d in found.values()
    )
    assert grid == [(16, 0.2), (32, 0.2)]
    for data in found.values():
        metrics = data["metrics"]["metrics/metrics.json"]["data"]
        assert 0 <= metrics["val"]["accuracy"] <= 1 and 0 <= metrics["test"]["accuracy"] <= 1
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], a, env=env).stdout
    assert "val.accuracy" in table and "test.accuracy" in table
    assert all(name in table for name in tasks)
    assert git_status(a) == "", "queued experiments leave the workspace alone"


def test_two_machines_share_features_through_an_s3_remote(world):
    a, env_a = world.a, world.env_a
    track_and_build(world)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/pipeline"], a, env=env_a)
    run(["dvc", "remote", "modify", "storage", "endpointurl", world.endpoint], a, env=env_a)
    config = (a / ".dvc" / "config").read_text()
    assert all(secret not in config for secret in CREDENTIALS.values())
    assert "access_key" not in config and "secret" not in config
    git_commit(a, "remote")
    pushed = run(["dvc", "push"], a, env=env_a)
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    import boto3

    stored = boto3.client(
        "s3", endpoint_url=world.endpoint, region_name="us-east-1", **s3_keys()
    ).list_objects_v2(Bucket=BUCKET)
    assert stored["KeyCount"] > 0
    origin = world.root / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], world.root)
    run(["git", "push", "-q", str(origin), "HEAD:refs/heads/main"], a)
    world.weights.unlink()  # whatever B does, it cannot run extract

    b = world.root / "b"
    env_b = machine_env(world.root / "home-b")
    run(["git", "clone", "-q", "-b", "main", str(origin), str(b)], world.root)
    assert not (b / ".dvc" / "config.local").exists()
    run(["dvc", "pull"], b, env=env_b)
    assert (b / "models" / "feature_extractor.keras").is_file()
    assert sorted(p.name for p in (b / "data" / "raw").iterdir()) == ["circle", "square"]
    status = run(["dvc", "status"], b, env=env_b)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout

    result = run(["dvc", "exp", "run", "evaluate", "-S", "train.dropout=0.4"], b, env=env_b)
    assert set(stages_run(result.stdout + result.stderr)) == {"train", "evaluate"}
    assert not list((world.root / "home-b").rglob("*.weights.h5")), "no weights fetched on B"

    # Back to the committed params: B's retrained head is A's, byte for byte.
    run(["git", "checkout", "--", "params.yaml"], b)
    result = run(["dvc", "repro", "evaluate"], b, env=env_b)
    assert set(stages_run(result.stdout + result.stderr)) == {"train", "evaluate"}
    assert git_status(b) == "", "dvc.lock, metrics and plots as A committed them"
