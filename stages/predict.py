"""Classify new images with the trained pipeline: ``python -m stages.predict PATH... [--top K] [--out CSV]``.

PATHs are image files or folders (searched recursively). Each image goes through exactly what
training used: ``decode_image`` with the settings split used (``models/export/prep.json``), then
the exported model ``models/classifier.keras`` (``to_model_input``, the frozen feature extractor
and the head in one Keras model; see ``stages/common/classifier.py``). An unreadable file gets
one error line and a non-zero exit status; the other files are still classified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.errors import end_command
from stages.common.images import IMAGE_EXTENSIONS, ImageError, decode_image, is_stray
from stages.common.io import write_csv


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


def decode_all(files: list[Path], prep, size: int) -> tuple[list[Path], np.ndarray, int]:
    """Decode every file; print one error line per unusable file and count them."""
    good, arrays, errors = [], [], 0
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
        "--models",
        type=Path,
        default=paths.MODELS_DIR,
        help="folder holding classifier.keras and export/",
    )
    args = parser.parse_args(argv)
    files = find_images(args.paths)
    if not files:
        print(f"ERROR: no image files found in {args.paths}", file=sys.stderr)
        return 2
    from stages.common.classifier import classify, load_bundle

    bundle = load_bundle(args.models)
    top = max(1, min(args.top, len(bundle.classes)))
    good, images, errors = decode_all(files, bundle.prep, bundle.size)
    rows = format_rows(good, classify(bundle.model, images), bundle.classes, top)
    for row in rows:
        print("\t".join(row))
    if args.out:
        header = ["path"] + [
            f"{c}_{k}" for k in range(1, top + 1) for c in ("class", "probability")
        ]
        write_csv(args.out, [header, *rows])
    print(f"predict: {len(good)} image(s) classified, {errors} unreadable", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    end_command(main())
