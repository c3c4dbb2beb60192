"""Stage 6, export: ship the trained pipeline as one model, a SavedModel and a TFLite file, checked.

Writes ``models/classifier.keras`` (a prepared uint8 image -> class probabilities: see
``stages/common/classifier.py``) and ``models/export/`` (``labels.txt``, ``prep.json``,
``saved_model/``, ``classifier.tflite``), then ``metrics/export.json``.

The check, before anything is written: every exported model (reloaded from its file) classifies
the test images (``data/split/test_images.npy``) and its probabilities are compared with the
head's on the cached test features as train wrote them (``data/predictions/test_probs.npy``),
which is what evaluate scores. Top-1 must be equal for every
image and every probability within ``TOLERANCE`` (TFLite in float32). A model whose
preprocessing differs from the one the features were extracted with fails here, loudly, and
nothing is written (the files are built in a scratch folder and moved into place only after
the check passed).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stages.common import classifier as shipped
from stages.common import paths
from stages.common.errors import PipelineError, run_stage
from stages.common.io import load_npy, read_json, remove_leftovers, save_model, write_json

READS = (
    paths.EXTRACTOR,
    paths.HEAD,
    paths.probs("test"),
    paths.split_images("test"),
    paths.split_labels("test"),
    paths.CLASSES,
    paths.PREP,
)
WRITES = (paths.CLASSIFIER, paths.EXPORT_DIR, paths.EXPORT_METRICS)
SHIPPED = (paths.CLASSIFIER, paths.EXPORT_DIR)  # built in a scratch folder, moved in when checked
EXPORTED = (
    paths.EXPORT_DIR,
    paths.EXPORT_LABELS,
    paths.EXPORT_PREP,
    paths.EXPORT_SAVED_MODEL,
    paths.EXPORT_TFLITE,
)
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


def export_saved_model(model, path: Path) -> None:
    """``model.export(path, format="tf_saved_model")``, byte-identical for the same model.

    Two things in it would change from one run to the next with the same weights, and so the
    md5 that dvc.lock records (a fresh clone's ``dvc repro`` would leave ``git status`` dirty):

    * the order of the variables (the checkpoint's ``_all_variables/N`` keys, the object graph
      and the save/restore functions in ``saved_model.pb``): Keras takes it from the traced
      function's ``variables``, which TensorFlow collects in a set ordered by memory address.
      The traced function gets the model's own variable order instead (``set_variables``);
    * ``fingerprint.pb``'s ``uuid``, a random number drawn at every save (see
      ``stable_fingerprint``).
    """
    keras = shipped.keras
    archive = keras.export.ExportArchive()
    signature = [keras.InputSpec(shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    traced = archive.track_and_add_endpoint("serve", model, signature).get_concrete_function()
    order = {id(v.value): i for i, v in enumerate(model.variables)}
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
    """Float32 TFLite from the SavedModel (no quantisation, so it can match to 1e-4)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    path.write_bytes(converter.convert())


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
    """Run the TFLite file with TensorFlow's interpreter, the whole batch at once."""
    import tensorflow as tf

    def run(images: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(model_path=str(path))
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.resize_tensor_input(inp["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

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
        "max_abs_diff": float(np.abs(probs - reference).max()) if probs.size else 0.0,
    }


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


def build(scratch: Path) -> None:
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
    model = shipped.build_classifier(extractor, head, size)
    out = {p: shipped.in_models(p, scratch) for p in (paths.CLASSIFIER, *EXPORTED)}
    out[paths.EXPORT_DIR].mkdir()
    save_model(model, out[paths.CLASSIFIER])
    export_saved_model(model, out[paths.EXPORT_SAVED_MODEL])
    convert_tflite(out[paths.EXPORT_SAVED_MODEL], out[paths.EXPORT_TFLITE])
    shipped.write_labels(out[paths.EXPORT_LABELS], read_json(paths.CLASSES))
    write_json(out[paths.EXPORT_PREP], prep.as_dict())


def verify(scratch: Path) -> dict[str, dict]:
    """Each exported file, reloaded, on the test images against the head's probabilities on the
    cached test features, as train wrote them (and evaluate scores them)."""
    reference = load_npy(paths.probs("test"))
    images = load_npy(paths.split_images("test"))
    runners = {
        "keras": keras_probabilities(shipped.in_models(paths.CLASSIFIER, scratch)),
        "saved_model": saved_model_probabilities(
            shipped.in_models(paths.EXPORT_SAVED_MODEL, scratch)
        ),
        "tflite": tflite_probabilities(shipped.in_models(paths.EXPORT_TFLITE, scratch)),
    }
    return {name: compare(name, run(images), reference) for name, run in runners.items()}


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
    with scratch_dir(paths.MODELS_DIR) as scratch:
        build(scratch)
        results = verify(scratch)
        check(results)
        sizes = {
            str(p.relative_to(paths.MODELS_DIR)): size_of(shipped.in_models(p, scratch))
            for p in (paths.CLASSIFIER, paths.EXPORT_SAVED_MODEL, paths.EXPORT_TFLITE)
        }
        place(scratch)
    n = len(load_npy(paths.split_labels("test")))
    write_json(
        paths.EXPORT_METRICS,
        {"test_images": n, "tolerance": TOLERANCE, **results, "size_bytes": sizes},
    )
    worst = max(r["max_abs_diff"] for r in results.values())
    print(
        f"export: wrote {paths.CLASSIFIER} and {paths.EXPORT_DIR}/ (SavedModel, TFLite, labels, "
        f"prep); on {n} test images all agree with the trained pipeline (top-1 equal, max "
        f"probability difference {worst:.2g}) in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
