"""The export stage: one model from a prepared image to probabilities, a SavedModel and TFLite.

The slow tests use ``shipped_repo`` (a tiny pipeline, 32 px, random weights, exported once per
session). The agreement check is shown to fail: exporting with a deliberately changed
preprocessing (pixels scaled to [0, 1] before ResNet50's own preprocessing, a classic slip)
stops the stage with a message, and nothing is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import git_commit, git_status, run

from stages.export import ExportError, check, compare

EXPORT_FILES = ("labels.txt", "prep.json", "classifier.tflite", "saved_model/saved_model.pb")
MODELS = ("keras", "saved_model", "tflite")


# --- The check itself (fast) ---------------------------------------------------------------------


def test_compare_counts_top1_disagreements_and_the_largest_difference():
    reference = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], np.float32)
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]], np.float32)
    result = compare("tflite", probs, reference)
    assert result["top1_disagreements"] == 1
    assert result["top1_agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["max_abs_diff"] == pytest.approx(0.2)


def test_check_passes_within_tolerance_and_names_every_failure():
    good = {"top1_agreement": 1.0, "top1_disagreements": 0, "max_abs_diff": 5e-5}
    check({"keras": good, "tflite": good})
    off = {"top1_agreement": 1.0, "top1_disagreements": 0, "max_abs_diff": 2e-4}
    flipped = {"top1_agreement": 0.5, "top1_disagreements": 3, "max_abs_diff": 0.4}
    with pytest.raises(ExportError) as err:
        check({"keras": good, "saved_model": off, "tflite": flipped})
    message = str(err.value)
    assert "saved_model: 0 test image(s) with another top-1 class" in message
    assert "difference 0.0002" in message
    assert "tflite: 3 test image(s) with another top-1 class" in message
    assert "keras" not in message.split("\n", 1)[1]
    assert "nothing was written" in message


def test_compare_refuses_a_shape_mismatch():
    with pytest.raises(ExportError, match="shape"):
        compare("tflite", np.zeros((3, 2)), np.zeros((3, 10)))


# --- The real stage (slow) -----------------------------------------------------------------------


@pytest.mark.slow
def test_exported_models_agree_with_the_trained_pipeline(shipped_repo: Path):
    metrics = json.loads((shipped_repo / "metrics/export.json").read_text())
    n_test = len(np.load(shipped_repo / "data/split/test_labels.npy"))
    assert metrics["test_images"] == n_test
    for name in MODELS:
        assert metrics[name]["top1_agreement"] == 1.0, name
        assert metrics[name]["top1_disagreements"] == 0, name
        assert metrics[name]["max_abs_diff"] <= 1e-4, name
    models = shipped_repo / "models"
    for rel in EXPORT_FILES:
        assert (models / "export" / rel).is_file(), rel
    assert metrics["size_bytes"]["classifier.keras"] == (models / "classifier.keras").stat().st_size
    tflite = models / "export/classifier.tflite"
    assert metrics["size_bytes"]["export/classifier.tflite"] == tflite.stat().st_size
    classes = json.loads((shipped_repo / "data/split/classes.json").read_text())
    assert (models / "export/labels.txt").read_text().splitlines() == classes
    # split's own preparation settings, so that predict and serve prepare images as training did
    assert json.loads((models / "export/prep.json").read_text()) == json.loads(
        (shipped_repo / "data/split/prep.json").read_text()
    )
    assert not list(models.glob(".scratch-*")), "the scratch folder is removed"
    status = run(["dvc", "status", "export"], shipped_repo).stdout
    assert "up to date" in status, status


@pytest.mark.slow
def test_classifier_is_one_safe_keras_model_on_uint8_images(shipped_repo: Path):
    """No Lambda in the file; loads with safe_mode=True in a fresh process; equals evaluate."""
    path = shipped_repo / "models/classifier.keras"
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config and "ModelInput" in config
    probe = (
        "import json, sys, numpy as np\n"
        "from stages.common.classifier import keras, load_bundle, classify\n"
        "b = load_bundle()\n"
        "m = b.model\n"
        "images = np.load('data/split/test_images.npy')\n"
        "p = classify(m, images)\n"
        "json.dump({'shape': list(m.input_shape), 'dtype': m.inputs[0].dtype,\n"
        "           'layers': [l.name for l in m.layers],\n"
        "           'top1': [b.classes[k] for k in p.argmax(1)],\n"
        "           'sums': float(np.abs(p.sum(1) - 1).max())}, sys.stdout)\n"
    )
    out = json.loads(run([sys.executable, "-c", probe], shipped_repo).stdout)
    assert out["shape"] == [None, 32, 32, 3] and out["dtype"] == "uint8"
    assert out["layers"][1] == "to_model_input" and len(out["layers"]) == 4
    assert out["sums"] < 1e-5
    with (shipped_repo / "plots/predictions.csv").open() as f:
        assert out["top1"] == [row["predicted"] for row in csv.DictReader(f)]


@pytest.mark.slow
def test_readme_tflite_snippet_runs_on_the_exported_file(shipped_repo: Path, tmp_path: Path):
    """The README's five lines, run as written on a test image, give the Keras model's answer."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("<!-- tflite-snippet -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 5, snippet
    image = tmp_path / "image.npy"  # outside shipped_repo, which tests only read
    np.save(image, np.load(shipped_repo / "data/split/test_images.npy")[0])
    code = (
        f"import numpy as np\nimage = np.load({str(image)!r})\n"
        + snippet
        + "\nprint(labels[probs.argmax()])\n"
    )
    printed = run([sys.executable, "-c", code], shipped_repo).stdout.split()[-1]
    with (shipped_repo / "plots/predictions.csv").open() as f:
        assert printed == next(csv.DictReader(f))["predicted"]


@pytest.mark.slow
def test_changed_preprocessing_fails_the_check_and_writes_nothing(
    shipped_repo: Path, tmp_path: Path
):
    repo = tmp_path / "repo"
    shutil.copytree(shipped_repo, repo, symlinks=True)
    images_py = repo / "stages/common/images.py"
    source = images_py.read_text()
    slip = 'return preprocess_input(ops.cast(batch, "float32"))'
    assert slip in source
    images_py.write_text(source.replace(slip, slip.replace('"float32")', '"float32") / 255.0')))
    lock = (repo / "dvc.lock").read_text()
    # Only export (not split/extract again): the features stay those of the old preprocessing.
    result = run(["dvc", "repro", "--single-item", "export"], repo, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "ERROR: export check failed" in output, output[-3000:]
    for name in MODELS:
        assert f"  - {name}: " in output, output[-3000:]
    assert "Traceback" not in output
    assert not (repo / "models/classifier.keras").exists()
    assert not (repo / "models/export").exists()
    assert not (repo / "metrics/export.json").exists()
    assert not list((repo / "models").glob(".scratch-*"))
    assert (repo / "dvc.lock").read_text() == lock


def digests(folder: Path) -> dict[str, str]:
    """md5 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_export_is_byte_identical_in_fresh_processes(shipped_repo: Path, tmp_path: Path):
    """Issue #13: the same inputs give the same bytes, so dvc.lock and ``git status`` stay clean.

    The SavedModel used to differ at every save: its variables in memory-address order and a
    random ``uuid`` in fingerprint.pb. Here the export runs twice more, each in a fresh
    process (``dvc repro -f``), after the one that built ``shipped_repo``.
    """
    repo = tmp_path / "repo"
    shutil.copytree(shipped_repo, repo, symlinks=True)
    git_commit(repo, "the shipped pipeline, dvc.lock included")
    first = digests(repo / "models")
    assert "export/saved_model/fingerprint.pb" in first and "export/classifier.tflite" in first
    for _ in range(2):
        run(["dvc", "repro", "--force", "--single-item", "export"], repo)
        again = digests(repo / "models")
        assert again.keys() == first.keys()
        assert [name for name in first if again[name] != first[name]] == []
    assert git_status(repo) == ""
