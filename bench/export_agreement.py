"""The raw-image export against Python's preparation on the photo bench: top-1 agreement.

    python -m bench.export_agreement [--per-class 100] [--full 50] [--models models]

On the seeded phone photos of ``bench/photo_data.py`` (12 MP JPEGs, cached in the temp folder as
``bench.photos`` caches them), each photo is classified twice with the exported model in
``--models`` (``dvc repro`` first):

* Python: ``decode_image`` (Pillow, ``prepare_image``) then ``classifier.keras``: split's and
  evaluate's path;
* the raw-image export: the SavedModel signature ``classify_image`` (preparation in-graph) on the
  photo as ``decode_photo`` decodes it (JPEG draft-decoded as ``decode_image`` does: the same
  pixels go in), and for the first ``--full`` photos also fully decoded (12 MP in, as a phone
  app passes it).

Writes ``bench/export_agreement.json``: agreement, how many pixels of the prepared images
differ, and every disagreement (file, both classes and probabilities).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.photo_data import photo_files, write_set
from stages.common import paths

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "export_agreement.json"


def full_decode(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def compare(files: list[Path], models: Path, decode) -> dict:
    from app.classifier import load_bundle, load_raw_classifier
    from stages.common.classifier import classify
    from stages.common.prep import decode_image

    bundle = load_bundle(models)
    classify_image = load_raw_classifier(models)
    start = time.perf_counter()
    python_prepared = np.stack([decode_image(f, bundle.prep) for f in files])
    python_probs = classify(bundle.model, python_prepared)
    python_seconds = time.perf_counter() - start
    start = time.perf_counter()
    raw = [classify_image(decode(f, bundle.prep)) for f in files]
    raw_seconds = time.perf_counter() - start
    raw_probs = np.stack([p for p, _ in raw])
    raw_prepared = np.stack([q for _, q in raw])
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--full", type=int, default=50)
    parser.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from app.classifier import decode_photo

    photo_set = Path(tempfile.gettempdir()) / f"photo-bench-{args.per_class}"
    write_set(photo_set, args.per_class, 0, 3024, 4032)
    files = photo_files(photo_set / "photos")
    record = {
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.export_agreement", *sys.argv[1:]]
        ),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "models_card": json.loads((args.models / "export/model.json").read_text()),
        "draft_decoded": compare(files, args.models, decode_photo),
        "fully_decoded": compare(files[: args.full], args.models, lambda f, prep: full_decode(f)),
    }
    for key in ("classes", "inputs", "outputs", "size_bytes", "agreement_with_pipeline"):
        record["models_card"].pop(key, None)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for key in ("draft_decoded", "fully_decoded"):
        r = record[key]
        print(
            f"{key}: {r['photos']} photos, top-1 agreement {r['top1_agreement']:.2%}, "
            f"{len(r['disagreements'])} disagreement(s), prepared pixels over 1 level "
            f"{r['prepared_pixels_over_1']:.4%}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
