"""bench.selection varies one default at a time; every other default must stay at params.yaml's
value in every run, whatever the previous run left in the scratch workspace."""

from __future__ import annotations

from bench import selection


def test_each_run_sets_every_other_candidate_key_to_params_yaml():
    sets = dict(s.split("=", 1) for s in selection.exp_sets("train.dropout", 0.25, 7, 1))
    expected = {
        k: selection.as_cli(v)
        for key in selection.CANDIDATES
        if key != "train.dropout"
        for k, v in selection.assignments(key, selection.current(key))
    }
    assert {k: sets[k] for k in expected} == expected
    assert sets["train.dropout"] == "0.25"
    assert (sets["split.seed"], sets["train.seed"], sets["extract.weights"]) == (
        "7",
        "1",
        "imagenet",
    )


def test_a_joint_key_sets_both_of_its_params():
    sets = dict(
        s.split("=", 1)
        for s in selection.exp_sets("train.batch_size+learning_rate", [256, 0.001], 42, 42)
    )
    assert (sets["train.batch_size"], sets["train.learning_rate"]) == ("256", "0.001")
