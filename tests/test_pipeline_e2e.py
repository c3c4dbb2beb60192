"""End to end: real ``dvc repro``, ``dvc exp``, ``dvc metrics diff`` and ``dvc plots diff`` in a
temporary git+DVC copy of this repository, with tiny params (32 px, random weights, 3 epochs).

The tests of this module share one repository and run in file order: the first builds and
commits the pipeline, the next ones change params and look at what DVC did.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_PARAMS, git_commit, run, scratch_repo, write_params
from PIL import Image

from stages.common import paths
from stages.common.calibration import apply_temperature
from tools.scratch import stages_run

pytestmark = pytest.mark.slow
STAGES = {
    "split",
    "augment",
    "extract",
    "train",
    "evaluate",
    "baselines_pixels",
    "baselines_features",
    "export",
}


def repro(repo: Path) -> set[str]:
    result = run(["dvc", "repro"], repo)
    return set(stages_run(result.stdout + result.stderr))


def assert_up_to_date(repo: Path) -> None:
    status = run(["dvc", "status"], repo)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project after a full ``dvc repro`` with tiny params, committed."""
    path = scratch_repo(tmp_path_factory.mktemp("e2e") / "repo", TINY_PARAMS)
    assert repro(path) == STAGES
    git_commit(path, "first run")
    return path


def flat_values(tree: dict) -> list:
    """Every leaf of a nested dict."""
    return [x for v in tree.values() for x in (flat_values(v) if isinstance(v, dict) else [v])]


def test_full_run_writes_every_output(repo: Path) -> None:
    metrics = json.loads((repo / paths.METRICS).read_text())
    info = json.loads((repo / paths.FEATURES_INFO).read_text())
    assert info["weights"]["spec"] == "random"
    assert info["weights"]["source"].startswith("random initialisation")
    assert info["layer"] == "conv4_block6_out"
    assert all(isinstance(v, int | float) for v in flat_values(metrics)), "metrics: numbers only"
    assert metrics["images"]["test"] + metrics["images"]["val"] + metrics["images"]["train"] == 120
    assert metrics["images"]["train_augmented"] == metrics["images"]["train"]  # copies: 1
    for split in ("train", "val", "test"):
        assert 0 <= metrics[split]["accuracy"] <= 1
    # Even random features carry signal: well above the 10 % of guessing.
    assert metrics["val"]["accuracy"] > 0.3
    per_class = list(csv.DictReader((repo / paths.PER_CLASS).open(encoding="utf-8")))
    assert [row["class"] for row in per_class] == [str(d) for d in range(10)]
    assert sum(int(row["support"]) for row in per_class) == metrics["images"]["test"]
    for path in (paths.CONFUSION, paths.PREDICTION_GRID, paths.MISCLASSIFIED, paths.TRAIN_LOG):
        assert (repo / path).stat().st_size > 0
    epochs = list(csv.DictReader((repo / paths.TRAIN_LOG).open()))
    assert [int(row["epoch"]) for row in epochs] == [0, 1, 2]
    assert_up_to_date(repo)


def test_every_file_written_is_a_declared_out(repo: Path) -> None:
    """What the stages really wrote (not what they say): each file lies in an out of dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outs = [
        Path(item if isinstance(item, str) else next(iter(item)))
        for stage in stages.values()
        for key in ("outs", "metrics", "plots")
        for item in stage.get(key, [])
    ]
    folders = (paths.SPLIT_DIR.parent, paths.MODELS_DIR, paths.METRICS_DIR, paths.PLOTS_DIR)
    inputs = {Path(d) for stage in stages.values() for d in stage["deps"]}  # e.g. data/mnist.json
    written = [
        p.relative_to(repo)
        for folder in folders
        for p in (repo / folder).rglob("*")
        if p.is_file()
        and p.name not in (".gitignore", ".gitkeep")  # git's, not the stages'
        and p.relative_to(repo) not in inputs
    ]
    assert len(written) > 20
    undeclared = [p for p in written if not any(p == o or p.is_relative_to(o) for o in outs)]
    assert not undeclared, f"written by a stage but not declared in dvc.yaml: {undeclared}"


def test_each_stage_recorded_its_time_outside_the_outputs(repo: Path) -> None:
    """run_stage's timing record (what bench/ reads): one per stage run, in DVC's scratch folder."""
    records = [json.loads(line) for line in (repo / paths.STAGE_TIMES).read_text().splitlines()]
    assert {r["stage"] for r in records} == STAGES and len(records) == len(STAGES)
    assert all(r["seconds"] > 0 for r in records)
    ignored = run(["git", "check-ignore", str(paths.STAGE_TIMES)], repo)
    assert ignored.stdout.strip() == str(paths.STAGE_TIMES)


def test_train_change_reruns_only_train_evaluate_and_export(repo: Path) -> None:
    write_params(repo, {"train.dropout": 0.25})
    assert repro(repo) == {"train", "evaluate", "export"}
    assert_up_to_date(repo)


def test_augment_change_reruns_augment_onward(repo: Path) -> None:
    write_params(repo, {"augment.rotation": 0.1})
    # baselines_pixels reads the augmented copies too (baselines.train_on: augmented).
    assert repro(repo) == {
        "augment",
        "baselines_pixels",
        "extract",
        "train",
        "evaluate",
        "baselines_features",
        "export",
    }
    assert_up_to_date(repo)
    git_commit(repo, "dropout 0.25, rotation 0.1")


def test_predict_agrees_with_evaluate(repo: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    rows = list(csv.DictReader((repo / paths.PREDICTIONS).open()))
    assert len(rows) == len(np.load(repo / paths.split_images("test")))
    # The test digits as a user would have them: 8x8 files of dark ink on white, which predict
    # decodes and prepares (crop, normalisation, fit) exactly as split did.
    digits = load_digits().images
    for i, row in enumerate(rows):
        index = int(row["source"].removeprefix("digits#"))
        ink = np.rint(255 - digits[index] * (255 / 16)).astype(np.uint8)
        Image.fromarray(ink, mode="L").save(tmp_path / f"{i:04d}.png")
    (tmp_path / "notes.png").write_text("not an image")
    out = tmp_path / "predictions.csv"
    result = run(
        ["python", "-m", "app.predict", str(tmp_path), "--top", "3", "--out", str(out)],
        repo,
        check=False,
    )
    assert result.returncode == 1  # one unreadable file...
    assert "notes.png" in result.stderr and "not a readable image" in result.stderr
    predicted = list(csv.DictReader(out.open()))  # ...but every real image was classified
    assert [Path(r["path"]).name for r in predicted] == [f"{i:04d}.png" for i in range(len(rows))]
    assert [r["class_1"] for r in predicted] == [r["predicted"] for r in rows]
    # predict's probabilities are calibrated (export's temperature, fitted on val) and its
    # preparation runs in-graph (within a grey level of split's prepare_image)
    temperature = json.loads((repo / paths.EXPORT_METRICS).read_text())["temperature"]
    calibrated = apply_temperature(np.load(repo / paths.probs("test")), temperature)
    probabilities = [float(r["probability_1"]) for r in predicted]
    assert np.allclose(probabilities, calibrated.max(1), atol=2e-2)


def test_metrics_and_plots_diff_between_commits(repo: Path, tmp_path: Path) -> None:
    write_params(repo, {"train.layers": [32], "train.dropout": 0.0})
    assert repro(repo) == {"train", "evaluate", "export"}
    diff = run(["dvc", "metrics", "diff", "--json"], repo)
    changes = json.loads(diff.stdout)[str(paths.METRICS)]
    assert set(changes["test.log_loss"]) >= {"old", "new"}  # another head: other probabilities
    text = run(["dvc", "metrics", "diff"], repo).stdout
    assert "test.log_loss" in text

    out = tmp_path / "page"
    run(["dvc", "plots", "diff", "HEAD", "-o", str(out)], repo)
    page = (out / "index.html").read_text()
    assert "Test confusion matrix" in page
    assert "Accuracy per epoch" in page and "Log-loss per epoch" in page
    assert "Training objective per epoch" in page
    assert "calibration.png" in page
    assert "prediction_grid.png" in page


def test_experiment_shows_up_in_exp_show(repo: Path) -> None:
    git_commit(repo, "smaller head")
    run(["dvc", "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs"], repo)
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "two-epochs" in shown
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], repo).stdout
    assert "two-epochs" in table and "test.accuracy" in table
