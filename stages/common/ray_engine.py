"""``extract.engine: ray``: the extractor's forward pass on a Ray cluster (Ray Data actor pool).

One function is the whole interface, ``features_of``: uint8 images (N, H, W, 3) -> float32
features (N, D), computed exactly as the local forward computes them: the images go to a Ray
Data actor pool (one actor per CPU slot, or per GPU where the cluster has GPUs), each actor
builds the same extractor once (``build_extractor`` + ``make_forward`` from stages/extract.py)
with the driver's weights (so no node downloads weights), every forward batch is padded to
exactly ``extract.batch_size`` and the padding rows dropped (an image's features never depend
on its batch neighbours), and the batches come back in image order (``preserve_order``).

The cluster is the one ``RAY_ADDRESS`` names, else a local one started for this run. Faults:
an actor whose process dies is restarted and its batch retried (``max_restarts``,
``max_task_retries``): a retry, never a wrong or missing feature. Ray is an optional extra
(requirements-ray.txt); asking for it without it installed is a one-line ``ERROR:``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import PipelineError

STAGES_DIR = Path(__file__).resolve().parents[1]  # shipped to the workers (py_modules)


def extract_stage():
    """stages/extract.py (its ``build_extractor``, ``make_forward``, ``cpu_streams``), imported
    by name: that stage imports this module, and an import back would be a cycle."""
    return importlib.import_module("stages.extract")


def import_ray():
    """``ray`` and ``ray.data``, or a PipelineError that says how to install them."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise PipelineError(
            "params.yaml: extract.engine is 'ray' but Ray is not installed: "
            "pip install -r requirements-ray.txt, or set extract.engine: local"
        ) from None
    return ray


class FeatureActor:
    """One Ray actor: the extractor built once, then uint8 batches -> float32 features."""

    def __init__(self, extract: dict, image_size: int, weights: Any, streams: int = 1) -> None:
        from stages.common.tf import setup_keras

        stage = extract_stage()
        keras = setup_keras(extract["seed"])
        import ray
        import tensorflow as tf

        # The driver's sub-batch layout (``cpu_streams``): the same shapes, the same numbers.
        if streams > 1:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(streams)
        keras.mixed_precision.set_global_policy(extract["precision"])
        strategy = tf.distribute.get_strategy()
        model, _ = stage.build_extractor(keras, {**extract, "weights": "random"}, image_size)
        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        model.set_weights(weights)
        self.forward = stage.make_forward(tf, model, strategy, streams)
        self.batch_size = extract["batch_size"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["data"]
        n = len(images)
        padded = np.zeros((self.batch_size, *images.shape[1:]), np.uint8)
        padded[:n] = images
        features = self.forward(padded).numpy()[:n].astype(np.float32)
        return {"features": features}


def connect(ray) -> None:
    """Join the cluster ``RAY_ADDRESS`` names, or start a local one; workers get ``stages``."""
    if ray.is_initialized():
        return
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or None,
        runtime_env={"py_modules": [str(STAGES_DIR)]},
        log_to_driver=False,
        include_dashboard=False,
    )


def pool_size(ray) -> tuple[int, dict[str, float]]:
    """Actors and each one's resources: one per GPU if the cluster has any, else per CPU."""
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"]), {"num_gpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def iter_features(
    images: np.ndarray, extract: dict, image_size: int, weights: Any, streams: int = 1
):
    """The features of ``images`` as float32 chunks, in image order, from the actor pool."""
    ray = import_ray()
    connect(ray)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    batch = extract["batch_size"]
    blocks = [np.ascontiguousarray(images[i : i + batch]) for i in range(0, len(images), batch)]
    actors, resources = pool_size(ray)
    dataset = ray.data.from_numpy(blocks).map_batches(
        FeatureActor,
        fn_constructor_kwargs={
            "extract": extract,
            "image_size": image_size,
            "weights": ray.put(weights),
            "streams": streams,
        },
        batch_size=batch,
        batch_format="numpy",
        concurrency=actors,
        max_restarts=-1,  # a dead actor process is started again ...
        max_task_retries=-1,  # ... and the batch it held is sent again
        **resources,
    )
    for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield out["features"]


def features_of(
    images: np.ndarray, extract: dict, image_size: int, weights: Any = None, streams: int = 1
) -> np.ndarray:
    """float32 (N, D) features of uint8 ``images`` (N, H, W, 3), computed on the Ray cluster.

    ``weights``: the folded extractor's weights (``model.get_weights()``); built here from
    ``extract`` when not given. ``streams``: the local forward's ``cpu_streams`` (each batch cut
    into that many sub-batches), which the actors copy so that the numbers match it.
    """
    if weights is None:
        from stages.common.tf import setup_keras

        keras = setup_keras(extract["seed"])
        model, _ = extract_stage().build_extractor(keras, extract, image_size)
        weights = model.get_weights()
    chunks = list(iter_features(images, extract, image_size, weights, streams))
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
