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

from bench.photo_data import photo_files, write_set
from stages.export import ExportError, check, compare

EXPORT_FILES = (
    "labels.txt",
    "prep.json",
    "model.json",
    "classifier.tflite",
    "classify_image.tflite",
    "classify_image.onnx",
    "saved_model/saved_model.pb",
)
MODELS = ("keras", "saved_model", "tflite")
RAW_MODELS = ("saved_model_raw", "tflite_raw", "onnx_raw")


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


def leaves(tree) -> list:
    """Every non-dict value of a nested dict."""
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in leaves(value)]
    return [tree]


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
    for name in RAW_MODELS:  # each test image again as a raw image, prepared in-graph
        assert metrics[name]["prepared_max_pixel_diff"] <= 1, name
        assert metrics[name]["top1_agreement"] >= 0.9, name
    assert 0.05 < metrics["temperature"] < 20
    assert all(isinstance(v, (int, float)) for v in leaves(metrics))  # numeric only
    models = shipped_repo / "models"
    card = json.loads((models / "export/model.json").read_text())
    assert card["temperature"] == metrics["temperature"]
    assert card["test"]["accuracy_low"] <= card["test"]["accuracy"] <= card["test"]["accuracy_high"]
    assert card["preparation"] == json.loads((shipped_repo / "data/split/prep.json").read_text())
    assert len(card["weights_sha256"]) == len(card["data_sha256"]) == 64
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
def test_classifier_loads_in_plain_keras_without_this_repository(
    shipped_repo: Path, tmp_path: Path
):
    """Keras' own layers only: ``load_model(..., safe_mode=True)`` in a fresh, isolated Python
    (``-I``: no PYTHONPATH, no current folder on sys.path) whose folder holds no project code;
    its probabilities are the trained pipeline's (the head's on the cached features, with the
    temperature export fitted on val)."""
    from stages.common.calibration import apply_temperature

    path = shipped_repo / "models/classifier.keras"
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    modules = {v for k, v in walk_items(config) if k == "module"}
    assert modules and all(m.startswith("keras") for m in modules), modules
    assert "Lambda" not in json.dumps(config)
    np.save(tmp_path / "images.npy", np.load(shipped_repo / "data/split/test_images.npy"))
    probe = (
        "import json, sys, keras, numpy as np\n"
        "assert not any('stages' in m for m in sys.modules)\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        "p = m.predict(np.load('images.npy'), verbose=0)\n"
        "np.save('probs.npy', p)\n"
        "json.dump({'shape': list(m.input_shape), 'dtype': m.inputs[0].dtype,\n"
        "           'layers': [l.__class__.__name__ for l in m.layers]}, sys.stdout)\n"
    )
    out = json.loads(run([sys.executable, "-I", "-c", probe], tmp_path).stdout)
    assert out["shape"] == [None, 32, 32, 3] and out["dtype"] == "uint8"
    assert out["layers"] == ["InputLayer", "Rescaling", "Functional", "Functional"]
    metrics = json.loads((shipped_repo / "metrics/export.json").read_text())
    reference = apply_temperature(
        np.load(shipped_repo / "data/predictions/test_probs.npy"), metrics["temperature"]
    )
    probs = np.load(tmp_path / "probs.npy")
    assert np.abs(probs - reference).max() < 1e-4
    with (shipped_repo / "plots/predictions.csv").open() as f:  # top-1 unchanged by calibration
        assert [str(k) for k in probs.argmax(1)] == [row["predicted"] for row in csv.DictReader(f)]


def walk_items(tree):
    """Every (key, value) pair in a nested JSON structure."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from walk_items(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from walk_items(value)


def client_photos(folder: Path) -> list[Path]:
    """One generated phone photo per class (240 x 320, EXIF-rotated JPEGs)."""
    write_set(folder, per_class=1, seed=0, width=240, height=320)
    return photo_files(folder / "photos")


@pytest.mark.slow
def test_raw_image_formats_agree_on_phone_photos(shipped_repo: Path, tmp_path: Path):
    """SavedModel ``classify_image``, LiteRT and ONNX Runtime on decoded photo files (no Python
    preparation) against predict's Python reference: ``decode_image`` + classifier.keras."""
    probe = (
        "import json, sys, numpy as np\n"
        "from PIL import Image, ImageOps\n"
        "from app.classifier import load_bundle\n"
        "from stages.common.classifier import classify\n"
        "from stages.common.prep import decode_image\n"
        "from stages.export import raw_saved_model, raw_tflite, raw_onnx\n"
        "files = sys.argv[1:]\n"
        "b = load_bundle()\n"
        "ref = classify(b.model, np.stack([decode_image(f, b.prep) for f in files]))\n"
        "runs = {'saved_model': raw_saved_model('models/export/saved_model'),\n"
        "        'tflite': raw_tflite('models/export/classify_image.tflite'),\n"
        "        'onnx': raw_onnx('models/export/classify_image.onnx')}\n"
        "out = {'reference': ref.tolist()}\n"
        "for name, run in runs.items():\n"
        "    images = [np.asarray(ImageOps.exif_transpose(Image.open(f)).convert('RGB'))\n"
        "              for f in files]\n"
        "    out[name] = [run(i)[0].tolist() for i in images]\n"
        "json.dump(out, sys.stdout)\n"
    )
    files = [str(p) for p in client_photos(tmp_path / "set")]
    out = json.loads(run([sys.executable, "-c", probe, *files], shipped_repo).stdout)
    reference = np.array(out.pop("reference"))
    graph = np.array(out["saved_model"])
    for name, probs in out.items():
        probs = np.array(probs)
        assert probs.shape == reference.shape, name
        # the formats run one graph: equal to float rounding
        assert np.abs(probs - graph).max() < 1e-3, name
        # full decoding here, draft decoding in decode_image, pixels within a grey level
        agree = (probs.argmax(1) == reference.argmax(1)).mean()
        assert agree >= 0.8, (name, agree)


@pytest.mark.slow
@pytest.mark.parametrize("client", ["keras", "litert", "onnx"])
def test_docs_clients_run_as_written_on_a_phone_photo(
    client: str, shipped_repo: Path, tmp_path: Path
):
    """docs/export.md's client blocks, verbatim, in an isolated Python beside ``models/`` and a
    photo: each prints the class the SavedModel's ``classify_image`` gives."""
    page = (Path(__file__).resolve().parents[1] / "docs/export.md").read_text(encoding="utf-8")
    code = page.split(f"<!-- client: {client} -->\n```python\n", 1)[1].split("```", 1)[0]
    photo = client_photos(tmp_path / "set")[3]
    work = tmp_path / "client"
    work.mkdir()
    (work / "models").symlink_to(shipped_repo / "models")
    shutil.copy(photo, work / "photo.jpg")
    printed = run([sys.executable, "-I", "-c", code], work).stdout.split()
    label, probability = printed[-2], float(printed[-1])
    expected = (
        "import sys, numpy as np\n"
        "from PIL import Image, ImageOps\n"
        "from stages.export import raw_saved_model\n"
        "image = np.asarray(ImageOps.exif_transpose(Image.open(sys.argv[1])).convert('RGB'))\n"
        "p = raw_saved_model('models/export/saved_model')(image)[0]\n"
        "labels = open('models/export/labels.txt').read().splitlines()\n"
        "print(labels[p.argmax()], p.max())\n"
    )
    want = run([sys.executable, "-c", expected, str(photo)], shipped_repo).stdout.split()
    assert label == want[-2]
    assert abs(probability - float(want[-1])) < 1e-3


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
    classifier_py = repo / "stages/common/classifier.py"
    source = classifier_py.read_text()
    slip = "keras.layers.Rescaling(\n        1.0,"
    assert slip in source
    classifier_py.write_text(source.replace(slip, slip.replace("1.0,", "1.0 / 255.0,")))
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
