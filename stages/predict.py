"""Classify new images with the trained pipeline: ``python -m stages.predict PATH... [--top K] [--out CSV]``.

PATHs are image files or folders (searched recursively). Each image goes through exactly what
training used: ``decode_image`` with the ``ImagePrep`` that split recorded in
``data/split/prep.json`` (crop, normalisation, fit), ``to_model_input`` + the cached feature
extractor (extract), then the head (train). An unreadable file gets one error line and a non-zero exit
status; the other files are still classified.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    ImagePrep,
    decode_image,
    is_stray,
    to_model_input,
)
from stages.common.io import read_json, write_text

BATCH = 64


def find_images(paths: list[str]) -> list[Path]:
    """Files as given; folders expanded to the image files below them, sorted, strays left out."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(is_stray(part) for part in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found


def load_pipeline(models: Path):
    """The feature extractor and head that ``dvc repro`` wrote, loaded in Keras' safe mode."""
    from stages.common.tf import setup_keras

    keras = setup_keras()
    for name in (paths.EXTRACTOR.name, paths.HEAD.name):
        if not (models / name).is_file():
            sys.exit(f"ERROR: {models / name} not found. Run `dvc repro` first.")
    extractor = keras.saving.load_model(models / paths.EXTRACTOR.name, safe_mode=True)
    head = keras.saving.load_model(models / paths.HEAD.name, safe_mode=True)
    return extractor, head


def classify(extractor, head, images: np.ndarray) -> np.ndarray:
    """uint8 RGB images (n, size, size, 3) -> class probabilities (n, classes)."""
    features = extractor.predict(to_model_input(images), batch_size=BATCH, verbose=0)
    return head.predict(features, batch_size=1024, verbose=0)


def load_prep(path: Path = paths.PREP) -> ImagePrep:
    """The image preparation that split used for the training images."""
    if not path.is_file():
        sys.exit(f"ERROR: {path} not found. Run `dvc repro` first.")
    return ImagePrep.from_params(read_json(path))


def decode_all(files: list[Path], prep: ImagePrep) -> tuple[list[Path], np.ndarray, int]:
    """Decode every file; print one error line per unusable file and count them."""
    good, arrays, errors = [], [], 0
    size = prep.image_size
    for path in files:
        try:
            arrays.append(decode_image(path, prep))
            good.append(path)
        except ImageError as err:
            print(f"ERROR: {err}", file=sys.stderr)
            errors += 1
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return good, images, errors


def format_rows(files: list[Path], probs: np.ndarray, classes: list[str], top: int) -> list[list]:
    rows = []
    for path, p in zip(files, probs, strict=True):
        best = np.argsort(-p, kind="stable")[:top]
        rows.append([str(path)] + [v for k in best for v in (classes[k], f"{p[k]:.4f}")])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top", type=int, default=1, help="how many classes to show per image")
    parser.add_argument("--out", type=Path, help="also write the predictions to this CSV file")
    parser.add_argument(
        "--models", type=Path, default=paths.MODELS_DIR, help="folder of the .keras files"
    )
    args = parser.parse_args(argv)
    files = find_images(args.paths)
    if not files:
        print(f"ERROR: no image files found in {args.paths}", file=sys.stderr)
        return 2
    extractor, head = load_pipeline(args.models)
    classes = read_json(paths.CLASSES)
    prep = load_prep()
    if prep.image_size != extractor.input_shape[1]:
        sys.exit(
            f"ERROR: {paths.PREP} says {prep.image_size} px but {args.models}/"
            f"feature_extractor.keras takes {extractor.input_shape[1]} px: run `dvc repro` "
            "to bring them in step."
        )
    top = max(1, min(args.top, len(classes)))
    good, images, errors = decode_all(files, prep)
    probs = classify(extractor, head, images) if len(good) else np.zeros((0, len(classes)))
    rows = format_rows(good, probs, classes, top)
    for row in rows:
        print("\t".join(row))
    if args.out:
        header = ["path"] + [
            f"{c}_{k}" for k in range(1, top + 1) for c in ("class", "probability")
        ]
        write_text(args.out, _csv([header, *rows]))
    print(f"predict: {len(good)} image(s) classified, {errors} unreadable", file=sys.stderr)
    return 1 if errors else 0


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
