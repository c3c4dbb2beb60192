"""bench.selection varies one default at a time; every other param must stay at params.yaml's
value in every run, whatever the previous run left in the scratch workspace."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT

from bench import selection
from stages.common import paths


def test_a_run_sets_only_its_key_and_the_seeds():
    sets = dict(s.split("=", 1) for s in selection.exp_sets("train.dropout", 0.25, 7, 1))
    assert sets == {
        "train.dropout": "0.25",
        "split.seed": "7",
        "train.seed": "1",
        "extract.weights": "imagenet",
        "data.source": "mnist",
    }


def test_a_digits_run_uses_all_the_embedded_digits():
    sets = dict(s.split("=", 1) for s in selection.exp_sets("train.dropout", 0.25, 7, 1, "digits"))
    assert sets["data.source"] == "digits"
    assert sets["data.max_per_class"] == "null"


def test_a_joint_key_sets_both_of_its_params():
    sets = selection.exp_sets("train.batch_size+learning_rate", [256, 0.001], 42, 42)
    assert sets[:2] == ["train.batch_size=256", "train.learning_rate=0.001"]


def test_params_are_put_back_before_each_run(tmp_path: Path):
    """What the last ``dvc exp run -S`` left in the workspace is replaced by params.yaml."""
    (tmp_path / paths.PARAMS_FILE).write_text("train:\n  dropout: 0.0\n", encoding="utf-8")
    selection.reset_params(tmp_path)
    assert (tmp_path / paths.PARAMS_FILE).read_bytes() == (
        REPO_ROOT / paths.PARAMS_FILE
    ).read_bytes()
