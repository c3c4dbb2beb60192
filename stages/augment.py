"""Stage 2, augment: write ``augment.copies`` seeded augmented variants of each training image.

Validation and test images are never augmented. Each copy is a random rotation, translation
and zoom (one affine map, borders filled with the nearest edge pixel, so paper stays paper),
then for photo-like lighting a random brightness shift and contrast change; a factor of 0 leaves
its part out. The random numbers of copy ``c`` of an image come from a generator seeded by a
hash of (the image's content, ``c``, the ``augment.*`` params, this code), and each image is
transformed on its own (no statistic over a batch), so a copy never changes when other images
are added, removed or batched differently. A later run therefore computes only the copies of
new images and copies the rest from the previous run's outputs (stages/common/store.py).

Outputs (``data/augmented/``): ``images.npy`` (copies x train images, uint8, copy-major),
``labels.npy``, and ``index.npy`` (each row's key and check, for later runs).
"""

from __future__ import annotations

import time

import numpy as np

from stages.common import paths
from stages.common.errors import run_stage
from stages.common.io import load_npy, npy_writer, release_rows, save_npy, scratch_path
from stages.common.params import load_params
from stages.common.progress import Progress
from stages.common.store import (
    KEY_BYTES,
    Store,
    assemble,
    code_digest,
    content_keys,
    digest,
    first_of_each,
    missing_rows,
    part,
    row_digests,
)

# What this stage reads and writes; tests/test_dvc_yaml.py checks dvc.yaml against it.
READS = (paths.split_images("train"), paths.split_labels("train"))
WRITES = (paths.AUGMENTED_DIR,)

FACTORS = ("rotation", "translation", "zoom", "brightness", "contrast")


def augment_salt(augment: dict) -> bytes:
    """What, besides an image and the copy index, decides a copy's draw (batch_size does not)."""
    settings = {k: augment[k] for k in ("seed", *FACTORS)}
    return digest("augment", settings)


def parts_table(values: np.ndarray) -> np.ndarray:
    """Each row of ``values`` (bytes) as ``part`` encodes it for ``digest``: length, then bytes."""
    length = np.frombuffer(values.shape[1].to_bytes(8, "big"), dtype=np.uint8)
    return np.concatenate([np.broadcast_to(length, (len(values), 8)), values], axis=1)


def copy_keys(salt: bytes, image_keys: np.ndarray, copies: int) -> np.ndarray:
    """(copies * n, 32) draw keys of the output rows, copy-major: digest(salt, image key, copy).

    A copy's random transform comes from its draw key alone, so it depends on the image, the
    copy index and the params, never on the other images or on this file's bytes."""
    images = parts_table(np.ascontiguousarray(image_keys, dtype=np.uint8))
    keys = []
    for c in range(copies):
        copy = np.frombuffer(part(c), dtype=np.uint8)
        rows = np.concatenate([images, np.broadcast_to(copy, (len(images), len(copy)))], axis=1)
        keys.append(row_digests(rows, part(salt)))
    return np.concatenate(keys) if keys else np.zeros((0, KEY_BYTES), dtype=np.uint8)


def store_keys(draw_keys: np.ndarray) -> np.ndarray:
    """The store's key of each row: digest(this stage's code, its draw key), so that a code
    change recomputes the copies (the same draws) instead of reusing what older code made."""
    return row_digests(parts_table(draw_keys), part(code_digest(__file__)))


def draw(key: bytes, augment: dict, size: int) -> tuple[np.ndarray, float, float]:
    """One copy's random transform, from its key: (affine map (8,), brightness delta, contrast).

    The affine map sends an output pixel to where it is read in the input (Keras'
    ``affine_transform`` convention): rotate by up to ``rotation`` of a full turn, scale by
    ``1 +- zoom`` and shift by up to ``translation`` of the side, about the image centre.
    """
    rng = np.random.default_rng(np.frombuffer(key[:16], dtype=np.uint64))
    u = rng.uniform(-1.0, 1.0, size=6)  # always six numbers, whatever is switched off
    angle = u[0] * augment["rotation"] * 2 * np.pi
    zoom = 1.0 + u[1] * augment["zoom"]
    dx, dy = u[2] * augment["translation"] * size, u[3] * augment["translation"] * size
    brightness = u[4] * augment["brightness"] * 255.0
    contrast = 1.0 + u[5] * augment["contrast"]
    c = (size - 1) / 2.0
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    transform = np.array(
        [
            cos,
            -sin,
            c - cos * (c + dx) + sin * (c + dy),
            sin,
            cos,
            c - sin * (c + dx) - cos * (c + dy),
            0.0,
            0.0,
        ],
        dtype=np.float32,
    )
    return transform, brightness, contrast


def affine_bilinear(images: np.ndarray, transforms: np.ndarray, chunk: int = 32) -> np.ndarray:
    """uint8 images warped by ``transforms`` ((n, 8), Keras' convention) as float32: bilinear,
    edges extended by their nearest pixel.

    The same numbers as ``keras.ops.image.affine_transform(images, transforms, "bilinear",
    "nearest")`` (tests/test_augment.py compares them), in NumPy: this stage then starts in a
    fraction of a second instead of waiting for TensorFlow, which matters when a grown folder
    leaves only its new images to augment. Each output pixel reads the point the map sends it
    to, clamped into the image, from the four pixels around it, one channel at a time and
    ``chunk`` images at a time (arrays that stay in the CPU's cache).
    """
    n, h, w, c = images.shape
    out = np.empty((n, h, w, c), dtype=np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for lo in range(0, n, chunk):
        batch = images[lo : lo + chunk]
        t = transforms[lo : lo + chunk].astype(np.float32)[:, :, None, None]
        read_x = np.clip(t[:, 0] * x + t[:, 1] * y + t[:, 2], 0, w - 1)
        read_y = np.clip(t[:, 3] * x + t[:, 4] * y + t[:, 5], 0, h - 1)
        left, top = np.floor(read_x), np.floor(read_y)
        fx, fy = read_x - left, read_y - top
        left, top = left.astype(np.intp), top.astype(np.intp)
        # Pixel numbers in the chunk; a pixel on the last column or row is its own right or
        # lower neighbour (its weight there is 0).
        first = (np.arange(len(batch))[:, None, None] * h + top) * w + left
        right = (left < w - 1).astype(np.intp)
        below = (top < h - 1).astype(np.intp) * w
        for channel in range(c):
            plane = np.ascontiguousarray(batch[..., channel]).ravel()
            upper_left, upper_right, lower_left, lower_right = (
                plane[at].astype(np.float32)
                for at in (first, first + right, first + below, first + below + right)
            )
            upper = upper_left * (1 - fx) + upper_right * fx
            lower = lower_left * (1 - fx) + lower_right * fx
            out[lo : lo + len(batch), ..., channel] = upper * (1 - fy) + lower * fy
    return out


def augment_batch(images: np.ndarray, keys: np.ndarray, augment: dict) -> np.ndarray:
    """The copies with ``keys`` of ``images`` (uint8, one row each), each image on its own."""
    size = images.shape[1]
    drawn = [draw(key.tobytes(), augment, size) for key in keys]
    if any(augment[f] > 0 for f in ("rotation", "translation", "zoom")):
        x = affine_bilinear(images, np.stack([t for t, _, _ in drawn]))
    else:
        x = images.astype(np.float32)
    for i, (_, brightness, contrast) in enumerate(drawn):
        if augment["contrast"] > 0:
            mean = x[i].mean(axis=(0, 1), keepdims=True)
            x[i] = (x[i] - mean) * np.float32(contrast) + mean
        if augment["brightness"] > 0:
            x[i] += np.float32(brightness)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def compute_copies(
    augment: dict, images: np.ndarray, draws: np.ndarray, todo: np.ndarray, out: np.ndarray
) -> None:
    """Write the copies of output rows ``todo`` (copy-major numbering; ``draws``: their draw keys)
    into ``out``, in order."""
    batch, n = augment["batch_size"], len(images)
    progress = Progress(len(todo), "augment")
    for lo in range(0, len(todo), batch):
        rows = todo[lo : lo + batch]
        source = np.asarray(images[rows % n])
        out[lo : lo + len(rows)] = augment_batch(source, draws[rows], augment)
        release_rows(out, lo, lo + len(rows))  # memory flat in the folder's size
        release_rows(images, 0, n)
        progress.add(len(rows))


def main() -> None:
    augment = load_params("augment")["augment"]
    start = time.perf_counter()
    images = load_npy(paths.split_images("train"), mmap=True)
    labels = load_npy(paths.split_labels("train"))
    copies, n = augment["copies"], len(images)
    draws = copy_keys(augment_salt(augment), content_keys(images, b"image"), copies)
    keys = store_keys(draws)
    store = Store()
    store.add_outputs(
        "augment", paths.AUGMENTED_DIR, [(paths.AUGMENTED_INDEX.name, paths.AUGMENTED_IMAGES.name)]
    )
    todo, slots = first_of_each(keys, missing_rows(store, keys))
    shape = (copies * n, *images.shape[1:])
    with scratch_path(paths.AUGMENTED_DIR, ".npy") as scratch:
        computed = np.zeros((0, *images.shape[1:]), dtype=np.uint8)
        if len(todo):
            computed = np.lib.format.open_memmap(
                scratch, mode="w+", dtype=np.uint8, shape=(len(todo), *images.shape[1:])
            )
            compute_copies(augment, images, draws, todo, computed)
        with npy_writer(paths.AUGMENTED_IMAGES, shape, np.uint8) as out:
            index = assemble(out, keys, store, computed, slots)
        del computed
    save_npy(paths.AUGMENTED_INDEX, index)
    save_npy(paths.AUGMENTED_LABELS, np.tile(labels, copies))
    print(
        f"augment: computed {len(todo)} image(s), {len(keys) - len(todo)} from the store; wrote "
        f"{paths.AUGMENTED_DIR}/ ({copies} copies x {n} training images = {copies * n} images) "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
