"""Stage 6, export: ship the trained pipeline as one model, a SavedModel and a TFLite file, checked.

Writes ``models/classifier.keras`` (a prepared uint8 image -> class probabilities: see
``stages/common/classifier.py``) and ``models/export/`` (``labels.txt``, ``prep.json``,
``saved_model/``, ``classifier.tflite``), then ``metrics/export.json``.

The check, before anything is written: every exported model (reloaded from its file) classifies
the test images (``data/split/test_images.npy``) and its probabilities are compared with the
head on the cached test features, which is what evaluate scores. Top-1 must be equal for every
image and every probability within ``TOLERANCE`` (TFLite in float32). A model whose
preprocessing differs from the one the features were extracted with fails here, loudly, and
nothing is written (the files are built in a scratch folder and moved into place only after
the check passed).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stages.common import classifier as shipped
from stages.common.errors import PipelineError, run_stage
from stages.common.io import load_npy, read_json, remove_leftovers, write_json

SPLIT = Path("data/split")
FEATURES = Path("data/features")
EXTRACTOR = Path("models/feature_extractor.keras")
HEAD = Path("models/head.keras")
METRICS = Path("metrics/export.json")
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


def save_keras(model, path: Path) -> None:
    model.save(path)


def export_saved_model(model, path: Path) -> None:
    model.export(str(path), format="tf_saved_model", verbose=False)


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


def build(scratch: Path) -> tuple[Path, Path]:
    """Write classifier.keras and export/ into ``scratch``; return both paths."""
    keras = shipped.keras
    extractor = keras.saving.load_model(EXTRACTOR, safe_mode=True, compile=False)
    head = keras.saving.load_model(HEAD, safe_mode=True, compile=False)
    size = int(load_npy(SPLIT / "test_images.npy", mmap=True).shape[1])
    model = shipped.build_classifier(extractor, head, size)
    keras_path, export = scratch / shipped.CLASSIFIER, scratch / shipped.EXPORT
    export.mkdir()
    save_keras(model, keras_path)
    export_saved_model(model, export / shipped.SAVED_MODEL)
    convert_tflite(export / shipped.SAVED_MODEL, export / shipped.TFLITE)
    shipped.write_labels(export / shipped.LABELS, read_json(SPLIT / "classes.json"))
    write_json(export / shipped.PREP, shipped.prep_settings(size))
    return keras_path, export


def verify(keras_path: Path, export: Path) -> dict[str, dict]:
    """Each exported file, reloaded, on the test images against the head on the cached features."""
    head = shipped.keras.saving.load_model(HEAD, safe_mode=True, compile=False)
    reference = head.predict(load_npy(FEATURES / "test_features.npy"), batch_size=1024, verbose=0)
    images = load_npy(SPLIT / "test_images.npy")
    runners = {
        "keras": keras_probabilities(keras_path),
        "saved_model": saved_model_probabilities(export / shipped.SAVED_MODEL),
        "tflite": tflite_probabilities(export / shipped.TFLITE),
    }
    return {name: compare(name, run(images), reference) for name, run in runners.items()}


def place(keras_path: Path, export: Path, models: Path = shipped.MODELS) -> None:
    """Move the checked files from the scratch folder to their places in ``models``."""
    target = models / shipped.EXPORT
    if target.exists():
        shutil.rmtree(target)
    remove_leftovers(models, f".tmp-{shipped.CLASSIFIER}.")
    keras_path.replace(models / shipped.CLASSIFIER)
    export.replace(target)


def main() -> None:
    start = time.perf_counter()
    shipped.keras.utils.set_random_seed(0)
    with scratch_dir(shipped.MODELS) as scratch:
        keras_path, export = build(scratch)
        results = verify(keras_path, export)
        check(results)
        sizes = {
            shipped.CLASSIFIER: size_of(keras_path),
            f"{shipped.EXPORT}/{shipped.SAVED_MODEL}": size_of(export / shipped.SAVED_MODEL),
            f"{shipped.EXPORT}/{shipped.TFLITE}": size_of(export / shipped.TFLITE),
        }
        place(keras_path, export)
    n = len(load_npy(SPLIT / "test_labels.npy"))
    write_json(METRICS, {"test_images": n, "tolerance": TOLERANCE, **results, "size_bytes": sizes})
    worst = max(r["max_abs_diff"] for r in results.values())
    print(
        f"export: wrote {shipped.MODELS / shipped.CLASSIFIER} and {shipped.MODELS / shipped.EXPORT}/ "
        f"(SavedModel, TFLite, labels, prep); on {n} test images all agree with the trained "
        f"pipeline (top-1 equal, max probability difference {worst:.2g}) "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
