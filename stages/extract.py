"""Stage 3, extract: run the frozen ResNet50 once over every image and cache pooled features.

The base is ``keras.applications.ResNet50(include_top=False)`` cut at ``extract.layer`` and
followed by global ``extract.pooling``; its input is ``to_model_input`` (ResNet50's own
``preprocess_input``), the same function predict uses. Features are written batch by batch
into memory-mapped ``.npy`` files, so memory does not grow with the number of images.

Outputs: ``data/features/{train,val,test}_{features,labels}.npy`` (train = split's training
images, then the augmented copies), ``data/features/info.json`` (weights, layer, shapes), and
``models/feature_extractor.keras`` (the base, for predict).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stages.common.errors import run_stage
from stages.common.images import to_model_input
from stages.common.io import atomic_path, load_npy, npy_writer, save_npy, write_json
from stages.common.params import load_params
from stages.common.tf import setup_keras
from stages.common.weights import load_resnet50

SPLIT = Path("data/split")
AUGMENTED = Path("data/augmented")
OUT = Path("data/features")
EXTRACTOR = Path("models/feature_extractor.keras")


def build_extractor(keras, extract: dict, image_size: int):
    """ResNet50 (frozen) up to ``extract.layer``, then global pooling: images -> feature vectors."""
    base, info = load_resnet50(extract["weights"], image_size, extract["seed"])
    pool = (
        keras.layers.GlobalAveragePooling2D
        if extract["pooling"] == "avg"
        else keras.layers.GlobalMaxPooling2D
    )
    features = pool(name=f"{extract['pooling']}_pool")(base.get_layer(extract["layer"]).output)
    model = keras.Model(
        base.input, features, name=f"resnet50_{extract['layer']}_{extract['pooling']}"
    )
    model.trainable = False
    return model, info


def sources(split: str) -> list[Path]:
    """The image arrays whose features make up one split (train includes the augmented copies)."""
    if split == "train":
        return [SPLIT / "train_images.npy", AUGMENTED / "images.npy"]
    return [SPLIT / f"{split}_images.npy"]


def label_sources(split: str) -> list[Path]:
    if split == "train":
        return [SPLIT / "train_labels.npy", AUGMENTED / "labels.npy"]
    return [SPLIT / f"{split}_labels.npy"]


def extract_split(keras, model, split: str, batch_size: int) -> tuple[int, int]:
    """Stream one split's images through the model into ``{split}_features.npy``."""
    arrays = [load_npy(path, mmap=True) for path in sources(split)]
    total = sum(len(a) for a in arrays)
    dim = model.output_shape[-1]
    progress = keras.utils.Progbar(total, unit_name="image")
    with npy_writer(OUT / f"{split}_features.npy", (total, dim), np.float32) as out:
        row = 0
        for images in arrays:
            for lo in range(0, len(images), batch_size):
                batch = to_model_input(np.asarray(images[lo : lo + batch_size]))
                out[row : row + len(batch)] = model.predict_on_batch(batch)
                row += len(batch)
                progress.add(len(batch))
    labels = np.concatenate([load_npy(path) for path in label_sources(split)])
    save_npy(OUT / f"{split}_labels.npy", labels)
    return total, dim


def main() -> None:
    extract = load_params("extract")["extract"]
    keras = setup_keras(extract["seed"])
    start = time.perf_counter()
    image_size = load_npy(SPLIT / "val_images.npy", mmap=True).shape[1]
    model, info = build_extractor(keras, extract, image_size)
    print(f"extract: ResNet50 weights {info.spec} ({info.source}), sha256 {info.sha256[:16]}...")
    counts = {}
    for split in ("train", "val", "test"):
        counts[split], dim = extract_split(keras, model, split, extract["batch_size"])
    with atomic_path(EXTRACTOR) as tmp:
        model.save(tmp)
    write_json(
        OUT / "info.json",
        {
            "weights": info.as_dict(),
            "layer": extract["layer"],
            "pooling": extract["pooling"],
            "image_size": int(image_size),
            "feature_dim": int(dim),
            "images": counts,
        },
    )
    seconds = time.perf_counter() - start
    print(
        f"extract: wrote {OUT}/ ({', '.join(f'{s} {n}' for s, n in counts.items())} x {dim} features "
        f"from {extract['layer']}) and {EXTRACTOR} in {seconds:.1f}s "
        f"({sum(counts.values()) / seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    run_stage(main)
