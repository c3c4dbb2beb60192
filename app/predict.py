"""Classify new images with the trained pipeline: ``python -m app.predict PATH... [--top K] [--out CSV]``.

PATHs are image files or folders (searched recursively). Each file is decoded to uint8 RGB
(``decode_photo``: EXIF orientation applied, as any client's decoder does) and classified by the
exported raw-image model, the SavedModel signature ``classify_image``, which prepares the image
in-graph exactly as split's ``prepare_image`` did for training (``models/export/prep.json``) and
gives calibrated probabilities: the code path every client of the export has (see
``stages/common/classifier.py``). An unreadable file gets one error line and a non-zero exit
status; the other files are still classified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stages.common import paths
from stages.common.decode import ImageError
from stages.common.errors import end_command
from stages.common.io import write_csv
from stages.common.scan import IMAGE_EXTENSIONS, is_stray


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


def classify_all(files: list[Path], prep, classify_image, n_classes: int):
    """Decode and classify every file; print one error line per unusable file and count them."""
    from app.classifier import decode_photo

    good, rows, errors = [], [], 0
    for path in files:
        try:
            image = decode_photo(path, prep)
        except ImageError as err:
            print(f"ERROR: {err}", file=sys.stderr)
            errors += 1
            continue
        rows.append(classify_image(image)[0])
        good.append(path)
    probs = np.stack(rows) if rows else np.zeros((0, n_classes), np.float32)
    return good, probs, errors


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
    from app.classifier import load_bundle, load_raw_classifier

    bundle = load_bundle(args.models)
    classify_image = load_raw_classifier(args.models)
    top = max(1, min(args.top, len(bundle.classes)))
    good, probs, errors = classify_all(files, bundle.prep, classify_image, len(bundle.classes))
    rows = format_rows(good, probs, bundle.classes, top)
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
