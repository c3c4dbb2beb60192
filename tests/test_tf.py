"""TensorFlow's start-up noise is dropped from a stage's stderr; its real warnings are not.

Real processes: a stage run as ``python -m stages.train`` (TensorFlow imported, tf.data used,
which is where the noise comes from), and a script that writes real warnings once the filter is
on. The lines in ``NOISE_LINES`` are copied from a stage's stderr before the filter existed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, run

from stages.common import paths
from stages.common.tf import is_noise

NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796163716.233773    5227 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796163716.240000    5227 cpu_feature_guard.cc:210] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "E0000 00:00:1796163735.783006    5426 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; ...> This "
    "may be expected if your graph generating binary is newer  than this binary. Unknown "
    "attributes will be ignored. NodeDef: {{node ParallelMapDatasetV2/_15}}",
]
REAL_LINES = [
    "E0000 00:00:1796163735.783006    5426 node_def_util.cc:682] NodeDef mentions attribute "
    "some_other_attribute which is not in the op definition",
    "W0000 00:00:1796163735.783006    5426 op_kernel.cc:1857] OP_REQUIRES failed",
    "UserWarning: something the user should see",
    "ERROR: Invalid params.yaml:",
    "Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", NOISE_LINES)
def test_noise_lines_are_recognised(line: str) -> None:
    assert is_noise(line)


@pytest.mark.parametrize("line", REAL_LINES)
def test_real_lines_are_kept(line: str) -> None:
    assert not is_noise(line)


def test_a_stage_shows_its_own_lines_and_no_startup_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / paths.FEATURES_DIR).mkdir(parents=True)
    (tmp_path / paths.SPLIT_DIR).mkdir(parents=True)
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        labels = np.arange(n, dtype=np.int32) % 2
        np.save(tmp_path / paths.features(split), rng.normal(size=(n, 4)).astype(np.float32))
        np.save(tmp_path / paths.feature_labels(split), labels)
        np.save(tmp_path / paths.split_labels(split), labels)
    (tmp_path / paths.CLASSES).write_text(json.dumps(["a", "b"]))
    params = yaml.safe_load((REPO_ROOT / paths.PARAMS_FILE).read_text(encoding="utf-8"))
    params["train"].update(epochs=2, layers=[8], patience=0)
    (tmp_path / paths.PARAMS_FILE).write_text(yaml.safe_dump(params), encoding="utf-8")

    result = run(
        [sys.executable, "-m", "stages.train"], tmp_path, env={"PYTHONPATH": str(REPO_ROOT)}
    )
    assert "train: wrote models/head.keras" in result.stdout
    assert "Epoch 2/2" in result.stdout
    noise = [line for line in result.stderr.splitlines() if is_noise(line)]
    assert noise == []
    for fragment in ("absl::InitializeLog", "oneDNN custom operations", "NodeDef mentions"):
        assert fragment not in result.stderr


def test_real_warnings_still_show(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, warnings
        from stages.common.tf import setup_keras
        keras = setup_keras(0, quiet=True)
        import tensorflow as tf
        list(tf.data.Dataset.range(4).map(lambda x: x + 1, num_parallel_calls=2))
        warnings.warn("a real Python warning")
        tf.get_logger().warning("a real TensorFlow warning")
        os.write(2, b"E0000 00:00:1.0 1 kernel.cc:1] a real C++ error\\n")
        print("done")
        """
    )
    result = run([sys.executable, "-c", script], tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.stdout.strip() == "done"
    for line in ("a real Python warning", "a real TensorFlow warning", "a real C++ error"):
        assert line in result.stderr
    assert "oneDNN custom operations" not in result.stderr


def test_keras_starts_without_its_unused_imports_which_still_import_afterwards(
    tmp_path: Path,
) -> None:
    """``setup_keras`` keeps scikit-learn and matplotlib out of Keras' start-up (about 1 s of
    every TensorFlow stage) and leaves them importable: the same process imports and uses both."""
    script = textwrap.dedent(
        """
        import sys
        from stages.common.tf import KERAS_UNUSED_IMPORTS, setup_keras
        keras = setup_keras(0)
        print(sorted(name for name in KERAS_UNUSED_IMPORTS if name in sys.modules))
        assert keras.ops.convert_to_numpy(keras.ops.ones(2)).sum() == 2
        import matplotlib.pyplot as plt
        from sklearn.metrics import accuracy_score
        plt.figure()
        print(accuracy_score([0, 1], [0, 1]))
        """
    )
    result = run([sys.executable, "-c", script], tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.stdout.split() == ["[]", "1.0"]
