"""Same commit, same bytes: the head under other thread and CPU settings, a rebuild from nothing.

Both tests start from ``shipped_repo`` (the tiny pipeline, built with the default settings) and
run the stages again in fresh processes under other settings; the bytes must not move.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, git_commit, git_status, run

from stages.common import paths

# One thread everywhere; and oneDNN held to AVX-512 without its bfloat16 instructions (what a
# CPU without bfloat16 or AMX units runs), with TensorFlow's thread pools at other sizes.
OTHER_SETTINGS = {
    "one thread": {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    },
    "no bfloat16 units, 3 threads": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "TF_NUM_INTRAOP_THREADS": "3",
        "TF_NUM_INTEROP_THREADS": "2",
    },
}


def head_outputs(repo: Path) -> dict[str, str]:
    """sha256 of the trained head and of every prediction file."""
    files = [repo / paths.HEAD, *sorted((repo / paths.PROBS_DIR).glob("*.npy"))]
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_default_precision_is_float32():
    params = yaml.safe_load((REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))
    assert params["train"]["precision"] == "float32"


@pytest.mark.parametrize("setting", list(OTHER_SETTINGS))
def test_head_is_byte_identical_under_other_thread_and_cpu_settings(
    shipped_repo, tmp_path, setting
):
    repo = tmp_path / "repo"
    shutil.copytree(shipped_repo, repo, symlinks=True)
    before = head_outputs(repo)
    shutil.rmtree(repo / paths.PROBS_DIR)
    (repo / paths.HEAD).unlink()
    run(["python", "-m", "stages.train"], repo, env=OTHER_SETTINGS[setting], timeout=600)
    assert head_outputs(repo) == before


def test_fresh_clone_with_an_empty_cache_rebuilds_the_committed_lock(shipped_repo, tmp_path):
    """Commit a built pipeline's dvc.lock and outputs; a clone (no DVC cache, no run cache)
    rebuilds them, with one thread, to the same hashes: dvc.lock unchanged, git status clean."""
    built = tmp_path / "built"
    shutil.copytree(shipped_repo, built, symlinks=True)
    git_commit(built, "built pipeline")
    committed = (built / "dvc.lock").read_text(encoding="utf-8")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(built), str(clone)], check=True)
    assert not (clone / ".dvc" / "cache").exists()
    run(["dvc", "repro", "export", "evaluate"], clone, env=OTHER_SETTINGS["one thread"])
    rebuilt = (clone / "dvc.lock").read_text(encoding="utf-8")
    before, after = yaml.safe_load(committed)["stages"], yaml.safe_load(rebuilt)["stages"]
    differ = [name for name in before if before[name] != after.get(name)]
    assert not differ, f"stages rebuilt to other hashes: {differ}"  # every md5, stage by stage
    assert rebuilt == committed
    assert git_status(clone) == ""
