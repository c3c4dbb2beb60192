"""Faults and reproducibility: Ctrl-C and SIGKILL mid-run, byte-identical reruns, safe loading.

The slow tests run the real ``dvc repro`` in a temporary git+DVC copy (``pipeline_repo``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO_ROOT,
    command_env,
    git_commit,
    git_status,
    run,
    snapshot,
    write_images,
    write_params,
)

from stages.common import paths
from stages.common.io import (
    atomic_path,
    load_npy,
    npy_writer,
    save_model,
    save_npy,
    scratch_path,
    write_json,
)
from tools.scratch import stages_run

TEMP_PREFIXES = (".tmp-", ".scratch-")


def leftovers(repo: Path) -> list[str]:
    """Temporary files of the stages anywhere in ``repo`` (DVC's and git's own dirs aside)."""
    return sorted(
        str(p.relative_to(repo))
        for p in repo.rglob("*")
        if p.name.startswith(TEMP_PREFIXES) and p.relative_to(repo).parts[0] not in (".dvc", ".git")
    )


def assert_up_to_date(repo: Path) -> None:
    status = run(["dvc", "status"], repo)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


# --- Safe loading and atomic writes (fast) -----------------------------------------------------


def test_load_npy_refuses_a_pickled_object_array(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_npy(path)
    with pytest.raises(ValueError, match=r"allow_pickle=False|Python objects"):
        load_npy(path, mmap=True)


def test_save_npy_refuses_object_arrays_and_load_npy_round_trips(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle=False"):
        save_npy(tmp_path / "objects.npy", np.array([object()], dtype=object))
    assert not list(tmp_path.iterdir()), "a failed write leaves nothing"
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    save_npy(tmp_path / "a.npy", array)
    assert np.array_equal(load_npy(tmp_path / "a.npy"), array)
    assert np.array_equal(load_npy(tmp_path / "a.npy", mmap=True), array)


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of ``<anything>.name(...)`` or ``name(...)`` in a module."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) == name or getattr(node.func, "id", None) == name)
    ]


def keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


STAGE_SOURCES = sorted(p for d in ("stages", "app") for p in (REPO_ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", STAGE_SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_stage_code_loads_nothing_unsafely(path):
    """np.load only with allow_pickle=False, Keras models only with safe_mode=True, no pickle."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in calls(tree, "load"):
        owner = getattr(call.func, "value", None)
        if getattr(owner, "id", None) in ("np", "numpy"):
            assert keyword(call, "allow_pickle") is False, f"line {call.lineno}: np.load"
        if getattr(owner, "id", None) == "yaml":
            loader = keyword(call, "Loader")
            assert getattr(loader, "id", None) in ("_StrictLoader", "SafeLoader"), call.lineno
    for call in calls(tree, "load_model"):
        assert keyword(call, "safe_mode") is True, f"line {call.lineno}: load_model"
    for call in calls(tree, "save"):
        assert keyword(call, "allow_pickle") in (None, False), f"line {call.lineno}"
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"pickle", "dill", "joblib", "cloudpickle", "shelve"}


def test_the_safety_check_catches_an_unsafe_load(tmp_path):
    """The check above is not vacuous: it flags the calls it is meant to flag."""
    tree = ast.parse("import numpy as np\nnp.load('x.npy')\nkeras.saving.load_model('m')\n")
    [np_load] = calls(tree, "load")
    [load_model] = calls(tree, "load_model")
    assert keyword(np_load, "allow_pickle") is None and keyword(load_model, "safe_mode") is None


def test_atomic_path_keeps_the_old_output_when_the_write_fails(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"accur')
        raise RuntimeError("killed half-way")
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_npy_writer_writes_np_save_bytes_in_order_and_only_whole(tmp_path):
    rows = np.arange(7 * 3 * 2, dtype=np.float32).reshape(7, 3, 2)
    with npy_writer(tmp_path / "f.npy", rows.shape, np.float32) as out:
        for lo in range(0, 7, 3):
            out[lo : lo + 3] = rows[lo : lo + 3]
        with pytest.raises(ValueError, match="in order"):
            out[0:1] = rows[:1]
    saved = io.BytesIO()
    np.save(saved, rows)
    assert (tmp_path / "f.npy").read_bytes() == saved.getvalue()
    # Killed or stopped before the last row: no output, only what was there before.
    short = npy_writer(tmp_path / "f.npy", rows.shape, np.float32)
    with pytest.raises(RuntimeError, match="wrote 3 of the 7 rows"), short as out:
        out[0:3] = rows[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]
    assert (tmp_path / "f.npy").read_bytes() == saved.getvalue()


def test_leftovers_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    (tmp_path / ".tmp-head.keras.abc123.keras").write_bytes(b"half a model")
    (tmp_path / ".tmp-other.npy.xyz.npy").write_bytes(b"someone else's")
    (tmp_path / ".scratch-q1w2.npy").write_bytes(b"scratch")
    with atomic_path(tmp_path / "head.keras") as tmp:
        tmp.write_bytes(b"model")
    with scratch_path(tmp_path, ".npy") as scratch:
        assert scratch.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other.npy.xyz.npy", "head.keras"]


def test_save_model_writes_the_same_bytes_for_the_same_model(tmp_path):
    """Keras records the save time and the memory address of shared objects; save_model does
    not, so DVC sees an unchanged model when the same weights are saved again."""
    import keras

    def build() -> keras.Model:  # like the head: layers share one dtype-policy object
        keras.backend.clear_session()  # the same layer names
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8, activation="relu")(inputs))
        outputs = keras.layers.Dense(3, activation="softmax")(hidden)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    first, second = build(), build()  # the same weights, other Python objects
    save_model(first, tmp_path / "a.keras")
    time.sleep(2.1)  # zip timestamps have a 2-second resolution, date_saved one second
    save_model(second, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]  # no leftovers
    loaded = keras.saving.load_model(tmp_path / "b.keras", safe_mode=True)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), first.predict(x, verbose=0))


# --- Kill dvc repro during extract, then resume (slow) -----------------------------------------


def wait_for_extract(repo: Path, log: Path, process: subprocess.Popen, timeout: float) -> str:
    """Block until extract is writing (a temp file in data/features); return what was seen."""
    deadline = time.monotonic() + timeout
    features = repo / paths.FEATURES_DIR
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dvc repro ended before extract started:\n{log.read_text()[-4000:]}")
        if features.is_dir() and any(p.name.startswith(TEMP_PREFIXES) for p in features.iterdir()):
            return "temp file"
        time.sleep(0.02)
    pytest.fail(f"extract did not start writing within {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def repro_in_its_own_group(repo: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``dvc repro`` writing to ``log``, in its own process group (a signal sent to the group
    reaches DVC and the stage); the group is killed on the way out if it is still running."""
    with log.open("w") as out:
        process = subprocess.Popen(
            ["dvc", "repro"],
            cwd=repo,
            env=command_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def repro_killed_during_extract(repo: Path, sig: signal.Signals, log: Path) -> str:
    """Start ``dvc repro`` in its own process group, send ``sig`` to the group while extract
    is writing, wait for the end; return DVC's and the stages' output."""
    with repro_in_its_own_group(repo, log) as process:
        wait_for_extract(repo, log, process, timeout=300)
        os.killpg(process.pid, sig)
        process.wait(timeout=120)
    output = log.read_text()
    assert process.returncode != 0, output
    assert "Running stage 'extract'" in output
    assert not (repo / paths.FEATURES_INFO).exists(), "extract must not have finished"
    return output


@pytest.mark.slow
def test_killed_during_extract_then_repro_completes_cleanly(pipeline_repo, tmp_path):
    """Ctrl-C, then SIGKILL, each while extract writes; the next ``dvc repro`` resumes cleanly."""
    repo = pipeline_repo
    write_params(repo, {"data.max_per_class": 30})  # extract runs a few seconds

    output = repro_killed_during_extract(repo, signal.SIGINT, tmp_path / "sigint.log")
    assert stages_run(output) == ["split", "augment", "extract"]
    assert "Interrupted: no output of this stage was written." in output
    assert leftovers(repo) == [], "Ctrl-C: the stage removes its own temp files"

    output = repro_killed_during_extract(repo, signal.SIGKILL, tmp_path / "sigkill.log")
    assert stages_run(output) == ["extract"], "split and augment were already done and locked"
    assert leftovers(repo), "SIGKILL leaves temp files behind: what the next run must handle"

    result = run(["dvc", "repro"], repo)
    ran = stages_run(result.stdout)
    assert sorted(ran) == [
        "baselines_features",
        "baselines_pixels",
        "evaluate",
        "export",
        "extract",
        "train",
    ]
    # evaluate runs after the baselines: it reads their predictions for its paired tests.
    assert ran.index("evaluate") > max(
        ran.index("baselines_pixels"), ran.index("baselines_features")
    )
    assert_up_to_date(repo)
    assert leftovers(repo) == []
    metrics = json.loads((repo / paths.METRICS).read_text())
    assert metrics["images"]["train_augmented"] == metrics["images"]["train"] > 0


# --- Reproducibility and the user's folder (slow) ----------------------------------------------


def outputs(repo: Path) -> dict[str, str]:
    """sha256 of metrics, plots, models and every data array the stages wrote."""
    folders = [paths.METRICS_DIR, paths.SPLIT_DIR, paths.AUGMENTED_DIR, paths.FEATURES_DIR]
    patterns = [f"{folder}/*" for folder in folders]
    patterns += [f"{paths.PLOTS_DIR}/*.csv", f"{paths.PLOTS_DIR}/*.png"]
    patterns += [str(paths.HEAD), str(paths.EXTRACTOR)]
    files = sorted(p for pattern in patterns for p in repo.glob(pattern) if p.is_file())
    assert len(files) >= 25
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_folder_source_reruns_byte_identical_and_never_touches_the_folder(pipeline_repo, tmp_path):
    """Same commit and params: byte-identical metrics and plots; data.folder never written."""
    repo = pipeline_repo
    raw = repo / "data" / "raw"
    write_images(raw, {"cat": 10, "영": 10, "big dog": 10}, size=24)
    (raw / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (raw / "cat" / "broken.png").write_bytes(b"")
    write_params(repo, {"data.source": "folder", "data.folder": "data/raw"})
    before = snapshot(raw)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}  # see what the stages write outside the repository

    first = run(["dvc", "repro"], repo, env=env)
    ran = stages_run(first.stdout)
    # evaluate comes after the baselines: it reads their predictions for its paired tests.
    assert ran[0] == "split", ran
    assert ran.index("evaluate") > max(
        ran.index("baselines_pixels"), ran.index("baselines_features")
    )
    assert sorted(ran) == sorted(
        [
            "split",
            "augment",
            "extract",
            "train",
            "baselines_pixels",
            "baselines_features",
            "evaluate",
            "export",
        ]
    )
    assert_up_to_date(repo)
    assert snapshot(raw) == before
    metrics = json.loads((repo / paths.METRICS).read_text(encoding="utf-8"))
    assert metrics["images"]["skipped"] == 3  # .DS_Store, the repository's .gitkeep, broken.png
    assert json.loads((repo / paths.CLASSES).read_text()) == ["big dog", "cat", "영"]
    reference = outputs(repo)
    git_commit(repo, "first run")  # what a fresh clone's `make run` must reproduce exactly

    # Every stage up to evaluate again; export's own rerun is byte-compared in test_export.py.
    run(["dvc", "repro", "-f", "evaluate"], repo, env=env)
    assert snapshot(raw) == before
    assert outputs(repo) == reference, "a forced rerun gives byte-identical outputs"
    assert_up_to_date(repo)
    assert git_status(repo) == "", "dvc.lock, metrics and plots unchanged after a rerun"
    assert leftovers(repo) == []

    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    unexpected = [
        p
        for p in written
        if not p.startswith(
            (".keras/", ".cache/matplotlib/", ".config/matplotlib/", ".config/dvc/", ".cache/dvc/")
        )
    ]
    assert unexpected == [], "only documented caches outside the repository"


# --- kill -9 at every stage (slow) ---------------------------------------------------------------


def repro_killed_in_a_new_stage(repo: Path, killed: list[str], log: Path) -> str | None:
    """Run ``dvc repro``; SIGKILL its process group one second into the first stage not yet in
    ``killed``. Return that stage, or None when the run ended by itself (every stage done)."""
    with repro_in_its_own_group(repo, log) as process:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            fresh = [s for s in stages_run(log.read_text()) if s not in killed]
            if fresh:
                time.sleep(1.0)  # inside the stage: imports done, outputs being written
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=60)
                return stages_run(log.read_text())[-1]
            time.sleep(0.05)
    assert process.returncode == 0, log.read_text()[-4000:]
    return None


@pytest.mark.slow
def test_kill_9_at_every_stage_then_repro_completes_cleanly(pipeline_repo, tmp_path):
    """SIGKILL ``dvc repro`` and its stage in each stage in turn; every next run resumes, and
    the last ends with every output locked and no temporary file left."""
    repo = pipeline_repo
    killed: list[str] = []
    for attempt in range(20):
        stage = repro_killed_in_a_new_stage(repo, killed, tmp_path / f"run{attempt}.log")
        if stage is None:
            break
        killed.append(stage)
    else:
        pytest.fail(f"dvc repro never completed; killed in {killed}")
    assert len(set(killed)) >= 6, killed  # the quick ones may finish within their second
    assert_up_to_date(repo)
    assert leftovers(repo) == []
    metrics = json.loads((repo / paths.METRICS).read_text())
    assert metrics["images"]["train"] > 0
