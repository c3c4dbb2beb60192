"""bench/common.py's experiment runner, the one every accuracy benchmark uses: a multi-config run must not
carry one configuration's params into the next. Runs the real ``dvc exp run`` on a one-stage
project that writes its params as its metrics (seconds, no TensorFlow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import git_commit, run

from bench import accuracy
from bench.common import exp_run, metrics, record_text
from stages.common import paths

pytestmark = pytest.mark.slow

ECHO_PARAMS = (
    "import json, os, yaml; os.makedirs('metrics', exist_ok=True); "
    "json.dump(yaml.safe_load(open('params.yaml'))['head'], open('metrics/metrics.json', 'w'))"
)


@pytest.fixture
def echo_repo(tmp_path: Path) -> Path:
    """A git+DVC project whose one stage copies ``head.*`` from params.yaml to its metrics."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / paths.PARAMS_FILE.name).write_text("head:\n  dropout: 0.5\n  width: 512\n")
    stage = {"cmd": f'python -c "{ECHO_PARAMS}"', "params": ["head"]}
    stage["metrics"] = [{"metrics/metrics.json": {"cache": False}}]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"echo": stage}}))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run(["dvc", "init", "-q"], repo)
    git_commit(repo, "echo project")
    return repo


def test_each_configuration_starts_from_the_committed_params(echo_repo: Path):
    exp_run(echo_repo, ["head.dropout=0.1"], target=None)
    assert metrics(echo_repo) == {"dropout": 0.1, "width": 512}
    left = yaml.safe_load((echo_repo / "params.yaml").read_text())
    assert left["head"]["dropout"] == 0.1, "dvc exp run leaves its values in the workspace"
    exp_run(echo_repo, ["head.width=256"], target=None)
    assert metrics(echo_repo) == {"dropout": 0.5, "width": 256}, "the first config leaked"


def test_a_selection_run_sets_only_its_key_the_seeds_and_the_data():
    dropout = accuracy.assignments("train.dropout", 0.25)
    sets = dict(s.split("=", 1) for s in accuracy.exp_sets(dropout, 7, 1))
    assert sets == {
        "train.dropout": "0.25",
        "split.seed": "7",
        "train.seed": "1",
        "extract.weights": "imagenet",
        "data.source": "mnist",
    }
    digits = dict(s.split("=", 1) for s in accuracy.exp_sets(dropout, 7, 1, "digits"))
    assert digits["data.source"] == "digits" and digits["data.max_per_class"] == "null"


def test_a_joint_key_sets_both_of_its_params():
    joint = accuracy.assignments("train.batch_size+learning_rate", [256, 0.001])
    sets = accuracy.exp_sets(joint, 42, 42)
    assert sets[:2] == ["train.batch_size=256", "train.learning_rate=0.001"]


def test_a_record_keeps_its_content_and_puts_one_run_on_a_line():
    record = {"runs": [{"seed": s, "val_errors": s % 5, "note": "x" * 20} for s in range(3)]}
    text = record_text(record, width=60)
    assert json.loads(text) == record
    assert (
        text.splitlines()[2] == '    {"seed": 0, "val_errors": 0, "note": "xxxxxxxxxxxxxxxxxxxx"},'
    )
