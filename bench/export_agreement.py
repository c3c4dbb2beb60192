"""The raw-image export against Python's preparation on the photo bench: top-1 agreement.

    python -m bench.export_agreement [--per-class 100] [--full 50] [--models models]

Each seeded phone photo of ``bench/photo_data.py`` (12 MP JPEGs, cached as ``bench.photos``
caches them) is classified twice with the exported model in ``--models`` (``dvc repro`` first):
by ``decode_image`` then ``classifier.keras`` (split's and evaluate's path), and by the
SavedModel signature ``classify_image`` (preparation in-graph) on the photo as ``decode_photo``
decodes it (the same pixels go in) and, for the first ``--full`` photos, fully decoded (12 MP,
as a phone app passes it). Writes ``bench/export_agreement.json``: agreement, how many prepared
pixels differ, and every disagreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.common import ROOT, write_record
from bench.photo_data import photo_set
from stages.common import paths


def full_decode(path: Path, prep: object = None) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def compare(files: list[Path], models: Path, decode: Callable) -> dict:
    from app.classifier import load_bundle, load_raw_classifier
    from stages.common.classifier import classify
    from stages.common.prep import decode_image

    bundle, classify_image = load_bundle(models), load_raw_classifier(models)
    start = time.perf_counter()
    python_prepared = np.stack([decode_image(f, bundle.prep) for f in files])
    python_probs = classify(bundle.model, python_prepared)
    python_seconds, start = time.perf_counter() - start, time.perf_counter()
    raw = [classify_image(decode(f, bundle.prep)) for f in files]
    raw_seconds = time.perf_counter() - start
    raw_probs, raw_prepared = np.stack([p for p, _ in raw]), np.stack([q for _, q in raw])
    off = np.abs(raw_prepared.astype(np.int16) - python_prepared.astype(np.int16))
    agree = raw_probs.argmax(1) == python_probs.argmax(1)
    disagreements = [
        {
            "file": str(files[i].relative_to(files[i].parents[2])),
            "python": bundle.classes[python_probs[i].argmax()],
            "python_probability": round(float(python_probs[i].max()), 4),
            "raw": bundle.classes[raw_probs[i].argmax()],
            "raw_probability": round(float(raw_probs[i].max()), 4),
            "max_pixel_diff": int(off[i].max()),
        }
        for i in np.flatnonzero(~agree)
    ]
    return {
        "photos": len(files),
        "top1_agreement": round(float(agree.mean()), 6),
        "max_probability_diff": round(float(np.abs(raw_probs - python_probs).max()), 6),
        "prepared_max_pixel_diff": int(off.max()),
        "prepared_pixels_differing": round(float((off > 0).mean()), 6),
        "prepared_pixels_over_1": round(float((off > 1).mean()), 6),
        "python_seconds": round(python_seconds, 1),
        "raw_seconds": round(raw_seconds, 1),
        "disagreements": disagreements,
    }


def main(argv: list[str] | None = None) -> None:
    from app.classifier import decode_photo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--full", type=int, default=50)
    parser.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "export_agreement.json")
    args = parser.parse_args(argv)
    files = photo_set(args.per_class)[1]
    card = json.loads((args.models / "export/model.json").read_text())
    record = {
        "models_card": {k: card[k] for k in ("preparation", "temperature", "test") if k in card},
        "draft_decoded": compare(files, args.models, decode_photo),
        "fully_decoded": compare(files[: args.full], args.models, full_decode),
    }
    for key in ("draft_decoded", "fully_decoded"):
        r = record[key]
        print(
            f"{key}: {r['photos']} photos, top-1 agreement {r['top1_agreement']:.2%}, {len(r['disagreements'])} disagreement(s)"
        )
    write_record(args.out, record, "export_agreement", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
