"""Stage 6, export: ship the trained pipeline as one model, a SavedModel, TFLite and ONNX, checked.

Writes ``models/classifier.keras`` (a prepared uint8 image -> calibrated class probabilities,
Keras layers only: see ``stages/common/classifier.py``) and ``models/export/`` (``labels.txt``,
``prep.json``, ``model.json`` (the model card), ``saved_model/`` with two signatures, ``serve``
(prepared images) and ``classify_image`` (one raw decoded image: the preparation of
``prepare_image`` in-graph, ``stages/common/graph_prep.py``), ``classifier.tflite`` (prepared
images) and the raw-image ``classify_image.tflite`` (float32; ``classify_image_float16.tflite``
beside it when its top-1 agrees) and ``classify_image.onnx``), then ``metrics/export.json``.

The temperature (``stages/common/calibration.py``) is fitted on the val split's probabilities
and folded into the head's last layer, so every format gives calibrated probabilities.

The check, before anything is written: every exported model (reloaded from its file) classifies
the test images (``data/split/test_images.npy``) and its probabilities are compared with the
head's on the cached test features as train wrote them (``data/predictions/test_probs.npy``),
which is what evaluate scores. Top-1 must be equal for every
image and every probability within ``TOLERANCE`` (TFLite in float32). A model whose
preprocessing differs from the one the features were extracted with fails here, loudly, and
nothing is written (the files are built in a scratch folder and moved into place only after
the check passed).

The raw-image formats take each test image as a raw image (it goes through the in-graph
preparation again) and are compared with the same image prepared by Python's ``prepare_image``
and classified by ``classifier.keras``: the pixels may differ by one grey level (float32 in the
graph, float64 in numpy), so top-1 agreement is reported and more than ``RAW_PIXEL_SHARE`` of
pixels off by more than one level fails the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stages.common import classifier as shipped
from stages.common import paths
from stages.common.calibration import apply_temperature, fit_temperature
from stages.common.errors import PipelineError, run_stage
from stages.common.io import load_npy, read_json, remove_leftovers, save_model, write_json
from stages.common.stats import accuracy_with_interval, calibration

READS = (
    paths.EXTRACTOR,
    paths.HEAD,
    paths.probs("test"),
    paths.split_images("test"),
    paths.split_labels("test"),
    paths.CLASSES,
    paths.PREP,
    paths.probs("val"),
    paths.split_labels("val"),
)
WRITES = (paths.CLASSIFIER, paths.EXPORT_DIR, paths.EXPORT_METRICS)
SHIPPED = (paths.CLASSIFIER, paths.EXPORT_DIR)  # built in a scratch folder, moved in when checked
EXPORTED = (
    paths.EXPORT_DIR,
    paths.EXPORT_LABELS,
    paths.EXPORT_PREP,
    paths.EXPORT_SAVED_MODEL,
    paths.EXPORT_TFLITE,
    paths.EXPORT_RAW_TFLITE,
    paths.EXPORT_RAW_TFLITE_FP16,
    paths.EXPORT_RAW_ONNX,
    paths.EXPORT_CARD,
)
RAW_SIGNATURE = "classify_image"  # the SavedModel signature (and TFLite/ONNX graph) on raw images
RAW_PIXEL_SHARE = 0.01  # at most this share of prepared pixels may differ by more than 1 level
FLOAT16_AGREEMENT = 0.99  # the float16 TFLite is kept when its top-1 agrees this often
ONNX_OPSET = 17
FLOAT16 = "tflite_raw_float16"
TOLERANCE = 1e-4  # largest allowed difference of any probability from the reference
SCRATCH_PREFIX = ".scratch-export-"


class ExportError(PipelineError):
    """An exported model does not reproduce the trained pipeline's predictions."""


@contextlib.contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A fresh folder in ``parent`` (same file system, so moving out of it is a rename), removed after."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(SCRATCH_PREFIX + "*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raw_image_function(model, prep):
    """The ``classify_image`` tf.function: one decoded uint8 RGB image (h, w, 3) of any size ->
    ``probabilities`` (classes,) and ``prepared`` (what the model saw: ``prepare_image``'s
    (size, size, 3) uint8), with the preparation in-graph (``graph_prep.prepare``)."""
    import tensorflow as tf

    from stages.common import graph_prep

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def classify_image(image):
        prepared = graph_prep.prepare(image, prep)
        probabilities = model(prepared[None], training=False)[0]
        return {"probabilities": probabilities, "prepared": prepared}

    return classify_image


def export_saved_model(model, path: Path, prep) -> None:
    """The SavedModel with two signatures, ``serve`` (a batch of prepared images, as
    ``classifier.keras``) and ``classify_image`` (``raw_image_function``), byte-identical for
    the same model.

    Two things in it would change from one run to the next with the same weights, and so the
    md5 that dvc.lock records (a fresh clone's ``dvc repro`` would leave ``git status`` dirty):

    * the order of the variables (the checkpoint's ``_all_variables/N`` keys, the object graph
      and the save/restore functions in ``saved_model.pb``): Keras takes it from the traced
      functions' ``variables``, which TensorFlow collects in a set ordered by memory address.
      Each traced function gets the model's own variable order instead (``set_variables``);
    * ``fingerprint.pb``'s ``uuid``, a random number drawn at every save (see
      ``stable_fingerprint``).
    """
    keras = shipped.keras
    archive = keras.export.ExportArchive()
    signature = [keras.InputSpec(shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    serve = archive.track_and_add_endpoint("serve", model, signature)
    raw = raw_image_function(model, prep)
    raw.get_concrete_function()
    raw = archive.add_endpoint(RAW_SIGNATURE, raw)
    order = {id(v.value): i for i, v in enumerate(model.variables)}
    for function in (serve, raw):
        traced = function.get_concrete_function()
        traced.set_variables(
            sorted(traced.variables, key=lambda v: (order.get(id(v), len(order)), v.name))
        )
    archive.write_out(str(path), verbose=False)
    stable_fingerprint(path)


def stable_fingerprint(saved_model: Path) -> None:
    """Replace the random ``uuid`` of ``fingerprint.pb`` with one derived from its content hashes.

    The other fields are hashes of the graph, the signatures, the object graph and the
    checkpoint, so the same SavedModel gets the same id and a different one another id (the
    same 128-bit decimal form TensorFlow writes).
    """
    from tensorflow.core.protobuf.fingerprint_pb2 import FingerprintDef

    path = saved_model / "fingerprint.pb"
    fingerprint = FingerprintDef.FromString(path.read_bytes())
    fingerprint.ClearField("uuid")
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def convert_tflite(saved_model: Path, path: Path) -> None:
    """Float32 TFLite of the ``serve`` signature (no quantisation, so it can match to 1e-4)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    path.write_bytes(converter.convert())


def convert_raw_tflite(saved_model: Path, path: Path, float16: bool = False) -> None:
    """TFLite of the ``classify_image`` signature with TFLite's built-in ops only (the converter
    fails if any op would need ``SELECT_TF_OPS``); ``float16``: weights stored as float16."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[RAW_SIGNATURE]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


def convert_onnx(model, prep, path: Path) -> None:
    """ONNX of ``raw_image_function`` (tf2onnx, opset ``ONNX_OPSET``): input ``image``, outputs
    ``probabilities`` and ``prepared``. The traced function is frozen first (its variables and
    captured constants become graph constants), as tf2onnx converts a GraphDef."""
    import logging

    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.util import deprecation

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    traced = raw_image_function(model, prep).get_concrete_function()
    with deprecation.silence():  # TF 1 helpers inside, each with a deprecation notice
        frozen = convert_variables_to_constants_v2(traced)
    graph = frozen.graph.as_graph_def()
    # tf.nest orders a dict's values by key, as the frozen function's outputs are ordered
    outputs = dict(
        zip(sorted(traced.structured_outputs), (t.name for t in frozen.outputs), strict=True)
    )
    proto, _ = tf2onnx.convert.from_graph_def(
        graph,
        input_names=[frozen.inputs[0].name],
        output_names=list(outputs.values()),
        opset=ONNX_OPSET,
    )
    renamed = {tensor: name for name, tensor in outputs.items()}
    for node in proto.graph.node:  # the outputs (and the input) under their plain names
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [
            renamed.get(i, "image" if i == frozen.inputs[0].name else i) for i in node.input
        ]
    for output in proto.graph.output:
        output.name = renamed.get(output.name, output.name)
    for graph_input in proto.graph.input:
        graph_input.name = "image"
    canonical_onnx(proto.graph)
    path.write_bytes(proto.SerializeToString(deterministic=True))


def canonical_onnx(graph) -> None:
    """Name and order an ONNX graph's nodes and initializers by what they compute, in place.

    tf2onnx's names and node order change from one process to the next (counters and sets in
    its optimisers), so the same model would give other bytes, and dvc.lock another md5, at
    every export. Each tensor gets a hash of its content (initializers) or of the node making it
    (op, attributes, the hashes of its inputs); nodes are put in a topological order that breaks
    ties by that hash and renamed by position. Graph inputs and outputs keep their names.
    """
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    tensor_hash = {name: hashlib.sha256(name.encode()).hexdigest() for name in keep}
    for init in graph.initializer:
        content = type(init)()
        content.CopyFrom(init)
        content.name = ""
        tensor_hash[init.name] = hashlib.sha256(
            content.SerializeToString(deterministic=True)
        ).hexdigest()
    node_hash = []
    for node in graph.node:  # ONNX stores nodes topologically sorted
        attributes = b"".join(a.SerializeToString(deterministic=True) for a in node.attribute)
        inputs = "|".join(tensor_hash.get(i, "") for i in node.input)
        digest = hashlib.sha256(f"{node.domain}:{node.op_type}:{inputs}:".encode() + attributes)
        node_hash.append(digest.hexdigest())
        for k, out in enumerate(node.output):
            if out not in keep:
                tensor_hash[out] = hashlib.sha256(f"{node_hash[-1]}:{k}".encode()).hexdigest()
    order = _topological_order(graph, node_hash)
    names = {}
    for index, init in enumerate(sorted(graph.initializer, key=lambda i: tensor_hash[i.name])):
        names[init.name] = f"c{index}"
    for index, i in enumerate(order):
        for k, out in enumerate(graph.node[i].output):
            if out and out not in keep:
                names[out] = f"t{index}_{k}"
    nodes = [graph.node[i] for i in order]
    for index, node in enumerate(nodes):
        node.name = f"n{index}"
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    initializers = sorted(graph.initializer, key=lambda i: names[i.name])
    for init in initializers:
        init.name = names[init.name]
    copies = [type(n)() for n in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    init_copies = [type(i)() for i in initializers]
    for copy, init in zip(init_copies, initializers, strict=True):
        copy.CopyFrom(init)
    del graph.node[:]
    graph.node.extend(copies)
    del graph.initializer[:]
    graph.initializer.extend(init_copies)
    del graph.value_info[:]  # optional shape hints, under the old names


def _topological_order(graph, node_hash: list[str]) -> list[int]:
    """Kahn's algorithm over the nodes, the smallest hash first among the ready ones."""
    import heapq

    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    waiting = [0] * len(graph.node)
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in producer:
                waiting[i] += 1
                consumers.setdefault(producer[name], []).append(i)
    ready = [(node_hash[i], i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (node_hash[j], j))
    return order


def keras_probabilities(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    model = shipped.keras.saving.load_model(path, safe_mode=True)
    return lambda images: shipped.classify(model, images)


def saved_model_probabilities(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive: ``serve`` only references its variables

    def run(images: np.ndarray) -> np.ndarray:
        batches = [images[i : i + 64] for i in range(0, len(images), 64)]
        return np.concatenate([loaded.serve(tf.constant(b)).numpy() for b in batches])

    return run


def tflite_probabilities(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run the TFLite file with LiteRT's interpreter (``ai-edge-litert``), the whole batch at once."""
    from ai_edge_litert.interpreter import Interpreter

    def run(images: np.ndarray) -> np.ndarray:
        interpreter = Interpreter(model_path=str(path))
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.resize_tensor_input(inp["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run


RawRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def raw_saved_model(path: Path) -> RawRunner:
    """One raw image -> (probabilities, prepared) with the SavedModel's ``classify_image``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures[RAW_SIGNATURE]

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = signature(image=tf.constant(image))
        return out["probabilities"].numpy(), out["prepared"].numpy()

    run.keep = loaded  # the signature only references the loaded object's variables
    return run


def raw_tflite(path: Path) -> RawRunner:
    """One raw image -> (probabilities, prepared) with a raw-image TFLite file (LiteRT)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(RAW_SIGNATURE)

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = runner(image=image)
        return out["probabilities"].copy(), out["prepared"].copy()

    return run


def raw_onnx(path: Path) -> RawRunner:
    """One raw image -> (probabilities, prepared) with the ONNX file (ONNX Runtime, CPU).

    ONNX Runtime's telemetry is turned off: it would write a device id and a database under
    ~/.cache/Microsoft, outside the repository.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = dict(zip(names, session.run(None, {"image": image}), strict=True))
        return out["probabilities"], out["prepared"]

    return run


def compare(name: str, probs: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement and the largest probability difference of one exported model."""
    if probs.shape != reference.shape:
        raise ExportError(
            f"export check: {name} gives probabilities of shape {probs.shape}, the trained "
            f"pipeline {reference.shape}."
        )
    agree = probs.argmax(1) == reference.argmax(1)
    return {
        "top1_agreement": round(float(agree.mean()) if len(agree) else 1.0, 6),
        "top1_disagreements": int((~agree).sum()),
        "max_abs_diff": two_digits(float(np.abs(probs - reference).max())) if probs.size else 0.0,
    }


def two_digits(x: float) -> float:
    """``x`` to 2 significant digits: a float difference's last digits depend on the thread
    count of the kernels that made it, and metrics/export.json must be the same bytes anywhere."""
    return float(f"{x:.1e}")


def check(results: dict[str, dict], tolerance: float = TOLERANCE) -> None:
    """Raise ExportError naming every exported model that does not reproduce the reference."""
    failed = [
        f"{name}: {r['top1_disagreements']} test image(s) with another top-1 class, largest "
        f"probability difference {r['max_abs_diff']:.3g}"
        for name, r in results.items()
        if r["top1_disagreements"] or r["max_abs_diff"] > tolerance
    ]
    if failed:
        raise ExportError(
            f"export check failed (allowed: equal top-1, probabilities within {tolerance:g}):\n  - "
            + "\n  - ".join(failed)
            + "\nThe exported model does not compute what the features were extracted with; "
            "nothing was written. Re-run `dvc repro` so that extract, train and export use the "
            "same preprocessing."
        )


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fitted_temperature() -> float:
    """The temperature fitted on the val split's probabilities (never test)."""
    return fit_temperature(load_npy(paths.probs("val")), load_npy(paths.split_labels("val")))


def build(scratch: Path, temperature: float) -> None:
    """Write classifier.keras and export/ into ``scratch``, laid out as models/ is."""
    keras = shipped.keras
    extractor = keras.saving.load_model(paths.EXTRACTOR, safe_mode=True, compile=False)
    head = keras.saving.load_model(paths.HEAD, safe_mode=True, compile=False)
    prep = shipped.load_prep(paths.PREP)  # what split did to the training images
    size = int(load_npy(paths.split_images("test"), mmap=True).shape[1])
    if prep.image_size != size:
        raise PipelineError(
            f"{paths.PREP} says {prep.image_size} px but the test images are {size} px: "
            "run `dvc repro` to bring split's outputs in step."
        )
    model = shipped.build_classifier(extractor, head, size, temperature)
    out = {p: shipped.in_models(p, scratch) for p in (paths.CLASSIFIER, *EXPORTED)}
    out[paths.EXPORT_DIR].mkdir()
    save_model(model, out[paths.CLASSIFIER])
    export_saved_model(model, out[paths.EXPORT_SAVED_MODEL], prep)
    convert_tflite(out[paths.EXPORT_SAVED_MODEL], out[paths.EXPORT_TFLITE])
    convert_raw_tflite(out[paths.EXPORT_SAVED_MODEL], out[paths.EXPORT_RAW_TFLITE])
    convert_raw_tflite(
        out[paths.EXPORT_SAVED_MODEL], out[paths.EXPORT_RAW_TFLITE_FP16], float16=True
    )
    convert_onnx(model, prep, out[paths.EXPORT_RAW_ONNX])
    shipped.write_labels(out[paths.EXPORT_LABELS], read_json(paths.CLASSES))
    write_json(out[paths.EXPORT_PREP], prep.as_dict())


def verify(scratch: Path, temperature: float) -> dict[str, dict]:
    """Each exported file, reloaded, on the test images against the head's probabilities on the
    cached test features, as train wrote them (and evaluate scores them), calibrated."""
    reference = apply_temperature(load_npy(paths.probs("test")), temperature)
    images = load_npy(paths.split_images("test"))
    runners = {
        "keras": keras_probabilities(shipped.in_models(paths.CLASSIFIER, scratch)),
        "saved_model": saved_model_probabilities(
            shipped.in_models(paths.EXPORT_SAVED_MODEL, scratch)
        ),
        "tflite": tflite_probabilities(shipped.in_models(paths.EXPORT_TFLITE, scratch)),
    }
    return {name: compare(name, run(images), reference) for name, run in runners.items()}


def verify_raw(scratch: Path) -> dict[str, dict]:
    """The raw-image formats, each test image passed as a raw image, against Python's
    ``prepare_image`` of the same image classified by classifier.keras."""
    from PIL import Image

    from stages.common.prep import prepare_image

    prep = shipped.load_prep(paths.PREP)
    images = load_npy(paths.split_images("test"))
    prepared = (
        np.stack([prepare_image(Image.fromarray(i), prep) for i in images])
        if len(images)
        else images
    )
    keras_model = shipped.keras.saving.load_model(
        shipped.in_models(paths.CLASSIFIER, scratch), safe_mode=True
    )
    reference = shipped.classify(keras_model, prepared)
    runners = {
        "saved_model_raw": raw_saved_model(shipped.in_models(paths.EXPORT_SAVED_MODEL, scratch)),
        "tflite_raw": raw_tflite(shipped.in_models(paths.EXPORT_RAW_TFLITE, scratch)),
        FLOAT16: raw_tflite(shipped.in_models(paths.EXPORT_RAW_TFLITE_FP16, scratch)),
        "onnx_raw": raw_onnx(shipped.in_models(paths.EXPORT_RAW_ONNX, scratch)),
    }
    results = {}
    for name, run in runners.items():
        outputs = [run(image) for image in images]
        probs = np.stack([p for p, _ in outputs]) if outputs else np.zeros_like(reference)
        pixels = np.stack([q for _, q in outputs]) if outputs else prepared
        off = np.abs(pixels.astype(np.int16) - prepared.astype(np.int16))
        results[name] = {
            **compare(name, probs, reference),
            "prepared_max_pixel_diff": int(off.max()) if off.size else 0,
            "prepared_pixels_over_1": round(float((off > 1).mean()) if off.size else 0.0, 6),
        }
    return results


def check_raw(results: dict[str, dict]) -> None:
    """Raise ExportError when a raw-image format prepares images unlike ``prepare_image``."""
    failed = [  # the float16 variant is optional: dropped, not failed, when it is off
        f"{name}: {r['prepared_pixels_over_1']:.2%} of prepared pixels differ from "
        f"prepare_image's by more than 1 grey level"
        for name, r in results.items()
        if r["prepared_pixels_over_1"] > RAW_PIXEL_SHARE and name != FLOAT16
    ]
    if failed:
        raise ExportError(
            f"export check of the raw-image models failed (allowed: {RAW_PIXEL_SHARE:.0%}):\n  - "
            + "\n  - ".join(failed)
            + "\nstages/common/graph_prep.py no longer computes what prepare_image does; nothing "
            "was written."
        )


def split_digest() -> str:
    """sha256 over the split files export reads (the data version the card names)."""
    digest = hashlib.sha256()
    for path in (
        paths.CLASSES,
        paths.PREP,
        paths.split_images("test"),
        paths.split_labels("test"),
        paths.split_labels("val"),
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    """sha256 over the shipped model's weights, each as contiguous little-endian float32."""
    model = shipped.keras.saving.load_model(path, safe_mode=True)
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def model_card(scratch: Path, temperature: float, results: dict, sizes: dict) -> dict:
    """``models/export/model.json``: what the model is, takes, gives, and how well it did."""
    prep = shipped.load_prep(paths.PREP)
    labels = load_npy(paths.split_labels("test"))
    raw_probs = load_npy(paths.probs("test"))
    probs = apply_temperature(raw_probs, temperature)
    right = probs.argmax(1) == labels if len(labels) else np.zeros(0, bool)
    return {
        "classes": read_json(paths.CLASSES),
        "inputs": {
            "classifier.keras, saved_model signature serve, classifier.tflite": (
                f"a batch of prepared images: uint8 RGB (n, {prep.image_size}, "
                f"{prep.image_size}, 3), prepared as prep.json says (stages/common/prep.py "
                "prepare_image)"
            ),
            f"saved_model signature {RAW_SIGNATURE}, classify_image.tflite, classify_image.onnx": (
                "one decoded photo: uint8 RGB (height, width, 3), any size >= 1 x 1, upright "
                "(EXIF orientation applied by the client's decoder), grey or RGBA converted to "
                "RGB by the client (RGBA composited onto white); the preparation runs in-graph"
            ),
        },
        "outputs": {
            "probabilities": "calibrated class probabilities, in the order of labels.txt",
            "prepared": f"({RAW_SIGNATURE} only) the prepared image the model saw",
        },
        "preparation": prep.as_dict(),
        "temperature": temperature,
        "data_sha256": split_digest(),
        "weights_sha256": weights_digest(shipped.in_models(paths.CLASSIFIER, scratch)),
        "test": {
            **accuracy_with_interval(right),
            "ece_uncalibrated": calibration(raw_probs, labels)["ece"],
            "ece_calibrated": calibration(probs, labels)["ece"],
        },
        "agreement_with_pipeline": {k: r["top1_agreement"] for k, r in results.items()},
        "size_bytes": sizes,
        "produced_by": "dvc repro export (python -m stages.export)",
    }


def place(scratch: Path) -> None:
    """Move the checked files from the scratch folder to their places in models/."""
    if paths.EXPORT_DIR.exists():
        shutil.rmtree(paths.EXPORT_DIR)
    remove_leftovers(paths.MODELS_DIR, f".tmp-{paths.CLASSIFIER.name}.")
    for path in SHIPPED:
        shipped.in_models(path, scratch).replace(path)


def main() -> None:
    start = time.perf_counter()
    shipped.keras.utils.set_random_seed(0)
    temperature = fitted_temperature()
    with scratch_dir(paths.MODELS_DIR) as scratch:
        build(scratch, temperature)
        results = verify(scratch, temperature)
        check(results)
        raw = verify_raw(scratch)
        check_raw(raw)
        fp16 = shipped.in_models(paths.EXPORT_RAW_TFLITE_FP16, scratch)
        if (
            raw[FLOAT16]["top1_agreement"] < FLOAT16_AGREEMENT
            or raw[FLOAT16]["prepared_pixels_over_1"] > RAW_PIXEL_SHARE
        ):
            fp16.unlink()
        sizes = {
            str(p.relative_to(paths.MODELS_DIR)): size_of(shipped.in_models(p, scratch))
            for p in (
                paths.CLASSIFIER,
                paths.EXPORT_SAVED_MODEL,
                paths.EXPORT_TFLITE,
                paths.EXPORT_RAW_TFLITE,
                paths.EXPORT_RAW_TFLITE_FP16,
                paths.EXPORT_RAW_ONNX,
            )
            if shipped.in_models(p, scratch).exists()
        }
        results.update(raw)
        write_json(
            shipped.in_models(paths.EXPORT_CARD, scratch),
            model_card(scratch, temperature, results, sizes),
        )
        place(scratch)
    n = len(load_npy(paths.split_labels("test")))
    write_json(
        paths.EXPORT_METRICS,
        {
            "test_images": n,
            "tolerance": TOLERANCE,
            "temperature": temperature,
            **results,
            "size_bytes": sizes,
        },
    )
    worst = max(results[k]["max_abs_diff"] for k in ("keras", "saved_model", "tflite"))
    raw_agree = min(r["top1_agreement"] for r in raw.values())
    print(
        f"export: wrote {paths.CLASSIFIER} and {paths.EXPORT_DIR}/ (SavedModel, TFLite, ONNX, "
        f"labels, prep, model card; temperature {temperature:.3f} from val); on {n} test images "
        f"all agree with the trained pipeline (top-1 equal, max probability difference "
        f"{worst:.2g}), the raw-image formats with prepare_image on {raw_agree:.1%} of top-1 "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
