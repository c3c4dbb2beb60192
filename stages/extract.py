"""Stage 3, extract: run the frozen ResNet50 once over every image and cache pooled features.

The base is ``keras.applications.ResNet50(include_top=False)`` cut at ``extract.layer`` and
followed by global ``extract.pooling``; its input is ResNet50's own ``preprocess_input`` (what
``to_model_input`` applies, the same function predict uses). Each BatchNormalization is folded
into the convolution before it (the same function, fewer passes over memory).

Speed: batches are read from the memory-mapped uint8 arrays by a ``tf.data`` pipeline that
prefetches while the model runs; the forward pass is one compiled ``tf.function`` (XLA on a GPU,
as Keras' own default; not on a CPU, where it is many times slower). On a CPU each core runs its
own share of every batch, single-threaded (``cpu_streams``): the same features, faster. With more than one GPU
visible the batches are split across them (``MirroredStrategy``). ``extract.precision`` chooses
float32 (default) or Keras mixed precision (16-bit compute, float32 weights and features).

Memory stays flat however many images there are: features are written batch by batch into
memory-mapped ``.npy`` files, and the pages of both the images read and the features written
are released as soon as each batch is done.

Each image is computed once: the features of images whose key (their pixels, the extract params,
the weights' sha256, device and code; ``feature_salt``) is in the previous run's outputs are
copied from there after a check (stages/common/store.py), and only the others go through
``compute_features``, in batches of exactly ``extract.batch_size`` (``padded_batches``), so an
image's features never depend on which images shared its batch: a warm run writes the same
bytes as one from scratch.

Outputs: ``data/features/{train,val,test}_{features,labels,index}.npy`` (train = split's training
images, then the augmented copies), ``data/features/info.json`` (weights, layer, shapes), and
``models/feature_extractor.keras`` (the model that made the features, for predict).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import (
    load_npy,
    npy_writer,
    release_rows,
    save_model,
    save_npy,
    scratch_path,
    write_json,
)
from stages.common.params import load_params
from stages.common.resnet50 import to_model_input
from stages.common.store import (
    Store,
    assemble,
    code_digest,
    content_keys,
    digest,
    first_of_each,
    missing_rows,
)
from stages.common.tf import setup_keras
from stages.common.weights import load_resnet50

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.SPLIT_DIR, paths.AUGMENTED_DIR)
WRITES = (paths.FEATURES_DIR, paths.EXTRACTOR)


def make_strategy(tf, devices: Sequence[str] | None = None):
    """``MirroredStrategy`` over ``devices`` (default: every GPU) if more than one, else one device."""
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(list(devices))
    return tf.distribute.get_strategy()


def fold_batchnorm(keras, model):
    """The same function as ``model`` with each BatchNormalization folded into its Conv2D.

    In inference a batch normalization is a per-channel affine map, so
    ``bn(conv(x)) = conv'(x)`` with ``kernel' = kernel * s`` and ``bias' = (bias - mean) * s + beta``,
    ``s = gamma / sqrt(variance + epsilon)``. Keras' ResNet50 names each one after its
    convolution (``conv2_block1_1_conv`` -> ``conv2_block1_1_bn``).
    """
    bn_type = keras.layers.BatchNormalization

    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, bn_type) else layer(*args, **kwargs)

    folded = keras.models.clone_model(
        model,
        clone_function=lambda layer: (
            layer if isinstance(layer, bn_type) else layer.from_config(layer.get_config())
        ),
        call_function=call,
    )
    names = {layer.name for layer in model.layers}
    for layer in folded.layers:
        if not layer.weights:
            continue
        weights = [w.astype(np.float64) for w in model.get_layer(layer.name).get_weights()]
        bn_name = layer.name.removesuffix("_conv") + "_bn"
        if isinstance(layer, keras.layers.Conv2D) and bn_name in names:
            bn = model.get_layer(bn_name)
            gamma, beta, mean, variance = (w.astype(np.float64) for w in bn.get_weights())
            scale = gamma / np.sqrt(variance + bn.epsilon)
            kernel, bias = weights
            weights = [kernel * scale, (bias - mean) * scale + beta]
        layer.set_weights([w.astype(np.float32) for w in weights])
    folded.trainable = False
    return folded


def global_pooling(keras, pooling: str, name: str | None = None):
    """The ``extract.pooling`` layer (``avg`` or ``max``), computed in float32."""
    layer = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    return layer[pooling](name=name or f"{pooling}_pool", dtype="float32")


def build_extractor(keras, extract: dict, image_size: int):
    """ResNet50 (frozen) up to ``extract.layer``, then global pooling: images -> feature vectors.

    Build it inside ``strategy.scope()`` to mirror it over several GPUs, and after
    ``keras.mixed_precision.set_global_policy`` for 16-bit compute; pooling is float32.
    """
    base, info = load_resnet50(extract["weights"], image_size, extract["seed"])
    features = global_pooling(keras, extract["pooling"])(base.get_layer(extract["layer"]).output)
    model = keras.Model(
        base.input, features, name=f"resnet50_{extract['layer']}_{extract['pooling']}"
    )
    return fold_batchnorm(keras, model), info


def cpu_streams(tf) -> int:
    """How many sub-batches the CPU forward pass runs side by side: one per core, or 1.

    At this stage's small image sizes one ResNet50 op is too small to keep several cores busy
    (the cores wait on each other at every op), so on a CPU with more than one core each core
    instead runs its own share of the batch, single-threaded: TensorFlow's intra-op pool is set
    to 1 thread and its inter-op pool to one per core. Every image is computed exactly as in one
    stream (tests/test_extract.py); only the speed changes (docs/performance.md). 1 on a GPU, on one
    core, or once TensorFlow has started (its thread pools are fixed then).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not cores or cores < 2 or tf.config.list_physical_devices("GPU"):
        return 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:  # the runtime is already initialised: keep its pools, one stream
        return 1
    return cores


def make_forward(tf, model, strategy, streams: int = 1) -> Callable:
    """Compiled uint8 batch -> float32 features: ``to_model_input``, then the model.

    ``streams`` > 1 (a CPU, ``cpu_streams``): the batch is cut into that many consecutive
    sub-batches of equal size, which TensorFlow runs in parallel (they do not depend on each
    other), and the features are joined back in order. With several replicas each one runs its slice of the
    batch and the slices are gathered back in order.
    """

    def forward(images):
        return model(to_model_input(images), training=False)

    def split_forward(images):
        # Padded with black images to a multiple of ``streams`` (an empty sub-batch would fail
        # in oneDNN's convolution), cut into equal parts; the padding's rows are dropped.
        n = tf.shape(images)[0]
        padded = tf.pad(images, [[0, -n % streams], [0, 0], [0, 0], [0, 0]])
        parts = tf.split(padded, streams)
        return tf.concat([forward(part) for part in parts], axis=0)[:n]

    jit = bool(tf.config.list_logical_devices("GPU"))  # Keras' "auto": XLA on GPU only
    if strategy.num_replicas_in_sync == 1:
        one = split_forward if streams > 1 else forward
        return tf.function(one, jit_compile=jit, reduce_retracing=True)
    replica_forward = tf.function(forward, jit_compile=jit, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def distributed(images):
        return strategy.gather(strategy.run(replica_forward, args=(images,)), axis=0)

    return distributed


def padded_batches(images, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of exactly ``batch_size`` rows of ``images``, the last one padded with black images.

    Every forward pass then has the same shape, so an image's features never depend on how many
    other images shared its batch (kernels may choose their algorithm by the batch shape); the
    padding's features are dropped by ``compute_features``.
    """
    for lo in range(0, len(images), batch_size):
        batch = np.asarray(images[lo : lo + batch_size])
        if isinstance(images, np.memmap):
            release_rows(images, lo, lo + len(batch))
        if len(batch) < batch_size:
            pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        yield batch


class Rows:
    """Chosen rows of several image arrays, read as one array (``len``, ``shape``, slices)."""

    def __init__(self, arrays: Sequence[np.ndarray], rows: np.ndarray) -> None:
        self.arrays, self.rows = arrays, np.asarray(rows, dtype=np.int64)
        self.starts = np.cumsum([0] + [len(a) for a in arrays])
        self.shape = (len(self.rows), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, where: slice) -> np.ndarray:
        rows = self.rows[where]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for a in np.unique(which):
            mask = which == a
            array = self.arrays[a]
            local = rows[mask] - self.starts[a]
            out[mask] = array[local]
            if isinstance(array, np.memmap) and len(local):
                release_rows(array, int(local.min()), int(local.max()) + 1)
        return out


def image_dataset(tf, images, batch_size: int, strategy):
    """``padded_batches`` of ``images`` as a prefetching ``tf.data`` pipeline (split over replicas).

    ``images``: one array-like, or a list of arrays read one after the other.
    """
    if isinstance(images, list | tuple):
        arrays = [a for a in images if len(a)] or list(images[:1])
        images = Rows(arrays, np.arange(sum(len(a) for a in arrays)))
    dataset = tf.data.Dataset.from_generator(
        lambda: padded_batches(images, batch_size),
        output_signature=tf.TensorSpec((batch_size, *images.shape[1:]), tf.uint8),
    )
    if strategy.num_replicas_in_sync > 1:
        # A dataset batched by tf.data itself is what the strategy knows how to split.
        dataset = dataset.unbatch().batch(batch_size)
        return strategy.experimental_distribute_dataset(dataset.prefetch(2))
    return dataset.prefetch(2)


def compute_features(
    tf, forward: Callable, strategy, images, batch_size: int, out: np.ndarray, progress=None
) -> None:
    """Features of ``images`` ((N, H, W, 3) uint8, anything that slices) into ``out`` (N, D).

    The one place features are computed (an alternative engine keeps this contract): batches of
    exactly ``batch_size`` per replica (``padded_batches``), the padding dropped.
    """
    if not len(images):
        return
    dataset = image_dataset(tf, images, batch_size * strategy.num_replicas_in_sync, strategy)
    write_features(forward, dataset, out, progress)


def write_features(forward: Callable, dataset, out: np.ndarray, progress=None) -> None:
    """Run ``forward`` over every batch of ``dataset`` into the rows of ``out``, in order.

    Rows past ``len(out)`` (the last batch's padding) are dropped.
    """
    row = 0
    for images in dataset:
        features = forward(images).numpy()[: len(out) - row]
        out[row : row + len(features)] = features
        if isinstance(out, np.memmap):
            release_rows(out, row, row + len(features))
        row += len(features)
        if progress is not None:
            progress.add(len(features))
    if row != len(out):
        raise RuntimeError(f"wrote {row} feature rows into an array of {len(out)}")


def sources(split: str) -> list[Path]:
    """The image arrays whose features make up one split (train includes the augmented copies)."""
    if split == "train":
        return [paths.split_images("train"), paths.AUGMENTED_IMAGES]
    return [paths.split_images(split)]


def label_sources(split: str) -> list[Path]:
    if split == "train":
        return [paths.split_labels("train"), paths.AUGMENTED_LABELS]
    return [paths.split_labels(split)]


def write_ray_features(images, model, extract: dict, out: np.ndarray, progress) -> None:
    """``extract.engine: ray``: ``compute_features``' numbers, from the Ray cluster's actor pool
    (``stages/common/ray_engine.py``; ``extract["streams"]``: the local ``cpu_streams``)."""
    from stages.common import ray_engine

    row = 0
    weights = model.get_weights()
    for features in ray_engine.iter_features(images, extract, images.shape[1], weights):
        out[row : row + len(features)] = features
        row += len(features)
        progress.add(len(features))
    if row != len(out):
        raise RuntimeError(f"the Ray engine wrote {row} feature rows into an array of {len(out)}")


def feature_salt(extract: dict, info, image_size: int, where: str) -> bytes:
    """Everything besides an image's pixels that decides its features (the store's key)."""
    import tensorflow as tf

    settings = {k: extract[k] for k in ("layer", "pooling", "precision", "batch_size")}
    here = Path(__file__).parent
    code = code_digest(
        __file__,
        here / "common" / "resnet50.py",
        here / "common" / "weights.py",
    )
    return digest("extract", settings, info.sha256, image_size, where, tf.__version__, code)


def extract_all(keras, tf, model, forward, strategy, extract: dict, salt: bytes) -> dict[str, int]:
    """Every split's features: computed for images the store lacks, copied for the rest."""
    store = Store()
    store.add_outputs(
        "extract",
        paths.FEATURES_DIR,
        [(paths.features_index(s).name, paths.features(s).name) for s in paths.SPLITS],
    )
    arrays = [load_npy(path, mmap=True) for s in paths.SPLITS for path in sources(s)]
    sizes = {s: sum(len(load_npy(p, mmap=True)) for p in sources(s)) for s in paths.SPLITS}
    keys = np.concatenate([content_keys(a, salt) for a in arrays])
    # One stream of the missing images of every split: one padded batch at most, in all.
    todo, slots = first_of_each(keys, missing_rows(store, keys))
    dim = int(model.output_shape[-1])
    with scratch_path(paths.FEATURES_DIR, ".npy") as scratch:
        computed = np.zeros((0, dim), dtype=np.float32)
        if len(todo):
            computed = np.lib.format.open_memmap(
                scratch, mode="w+", dtype=np.float32, shape=(len(todo), dim)
            )
            progress = keras.utils.Progbar(len(todo), unit_name="image")
            images = Rows([a for a in arrays if len(a)], todo)
            if extract["engine"] == "ray":
                write_ray_features(images, model, extract, computed, progress)
            else:
                batch_size = extract["batch_size"]
                compute_features(tf, forward, strategy, images, batch_size, computed, progress)
        lo = 0
        for split in paths.SPLITS:
            part = slice(lo, lo + sizes[split])
            lo += sizes[split]
            with npy_writer(paths.features(split), (sizes[split], dim), np.float32) as out:
                index = assemble(out, keys[part], store, computed, slots[part])
            save_npy(paths.features_index(split), index)
            labels = np.concatenate([load_npy(path) for path in label_sources(split)])
            save_npy(paths.feature_labels(split), labels)
        del computed
    total = len(keys)
    print(f"extract: computed {len(todo)} image(s), {total - len(todo)} from the store")
    return sizes


def main() -> None:
    extract = load_params("extract")["extract"]
    if extract["engine"] == "ray":
        from stages.common.ray_engine import import_ray

        import_ray()  # the one-line ERROR before any work when Ray is missing
    keras = setup_keras(extract["seed"])
    import tensorflow as tf

    start = time.perf_counter()
    streams = cpu_streams(tf)  # before anything starts TensorFlow's runtime
    keras.mixed_precision.set_global_policy(extract["precision"])
    image_size = load_npy(paths.split_images("val"), mmap=True).shape[1]
    strategy = make_strategy(tf)
    with strategy.scope():
        model, info = build_extractor(keras, extract, image_size)
    forward = make_forward(tf, model, strategy, streams)
    devices = strategy.num_replicas_in_sync
    if devices > 1:
        where = f"{devices} GPUs"
    elif tf.config.list_logical_devices("GPU"):
        where = "GPU"
    else:
        where = f"CPU, {streams} stream{'s' if streams > 1 else ''}"
    print(
        f"extract: ResNet50 weights {info.spec} ({info.source}), sha256 {info.sha256[:16]}..., "
        f"{extract['precision']} on {where}"
    )
    salt = feature_salt(extract, info, image_size, where)
    extract = {**extract, "streams": streams}  # the Ray engine's actors cut batches the same way
    counts = extract_all(keras, tf, model, forward, strategy, extract, salt)
    dim = int(model.output_shape[-1])
    save_model(model, paths.EXTRACTOR)
    write_json(
        paths.FEATURES_INFO,
        {
            "weights": info.as_dict(),
            "layer": extract["layer"],
            "pooling": extract["pooling"],
            "image_size": int(image_size),
            "feature_dim": dim,
            "images": counts,
        },
    )
    seconds = time.perf_counter() - start
    print(
        f"extract: wrote {paths.FEATURES_DIR}/ ({', '.join(f'{s} {n}' for s, n in counts.items())} x {dim} features "
        f"from {extract['layer']}) and {paths.EXTRACTOR} in {seconds:.1f}s "
        f"({sum(counts.values()) / seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    run_stage(main)
