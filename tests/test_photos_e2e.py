"""Phone photos end to end: a tiny generated photo set through the real ``dvc repro``, then
``predict`` on the test photos (the raw-image export, preparation in-graph) gives evaluate's
top-1 classes and its probabilities after the export's temperature."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import git_commit, run, write_params

from bench.photo_data import write_set
from stages.common import paths
from stages.common.calibration import apply_temperature

pytestmark = pytest.mark.slow


def test_predict_on_photos_equals_evaluate(pipeline_repo: Path, tmp_path: Path) -> None:
    photos = tmp_path / "set"
    # 8 per class: 5 train images each, what the baselines' 5-fold cross-validation needs.
    write_set(photos, per_class=8, seed=0, width=240, height=320)
    write_params(pipeline_repo, {"data.source": "folder", "data.folder": str(photos / "photos")})
    git_commit(pipeline_repo, "photos")
    run(["dvc", "repro"], pipeline_repo)
    prep = json.loads((pipeline_repo / paths.PREP).read_text())
    assert prep == {
        "image_size": 32,
        "fit": "pad",
        "crop": "ink",
        "crop_margin": 0.15,
        "normalise": "illumination",
    }
    report = json.loads((pipeline_repo / paths.SPLIT_REPORT).read_text())
    assert report["notes"] == {"no_ink_found": 0}  # the ink was found on every photo

    rows = list(csv.DictReader((pipeline_repo / paths.PREDICTIONS).open()))
    assert len(rows) == report["images"]["test"] > 0  # every test photo
    files = [str(photos / "photos" / row["source"]) for row in rows]
    out = tmp_path / "predicted.csv"
    run(["python", "-m", "app.predict", *files, "--out", str(out)], pipeline_repo)
    predicted = list(csv.DictReader(out.open()))
    assert [r["path"] for r in predicted] == files
    assert [r["class_1"] for r in predicted] == [r["predicted"] for r in rows]
    # predict's probabilities are calibrated (the temperature export fitted on val); its
    # preparation runs in-graph, within a grey level of split's prepare_image
    temperature = json.loads((pipeline_repo / paths.EXPORT_METRICS).read_text())["temperature"]
    calibrated = apply_temperature(np.load(pipeline_repo / paths.probs("test")), temperature)
    probabilities = [float(r["probability_1"]) for r in predicted]
    assert np.allclose(probabilities, calibrated.max(1), atol=2e-2)
