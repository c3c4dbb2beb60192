"""A seeded benchmark set of simulated phone photos of real handwritten (MNIST) digits.

``write_set(OUT, ...)`` writes ``OUT/photos/<digit>/<name>.jpg``, the same digits as clean,
tight scans ``OUT/scans/<digit>/<name>.png`` (28 px, dark ink on white) and ``OUT/info.json``:
the first ``per_class`` digits of each class in a seeded permutation of the MNIST digits of
``stages/common/mnist.py``.

Each photo is what a phone gives for a digit written on a sheet of paper: a portrait
``width`` x ``height`` JPEG; paper of some colour under a light gradient and a vignette; ink
of some colour, slightly blurred; the digit 25-50 % of the short side tall, off-centre and
slightly rotated; sensor noise; and an EXIF orientation of 1, 6 or 8 with the pixels stored
rotated accordingly (as phones do), so only a reader that applies the orientation sees the
page upright. Everything is drawn from one ``numpy`` generator per image, seeded by
``(seed, MNIST index)``: the same arguments give the same bytes
(``tests/bench/test_photo_data.py``), and the set for a smaller ``per_class`` is part of a
larger one.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from stages.common.io import atomic_path
from stages.common.mnist import load_mnist

PAPERS = [(250, 249, 244), (245, 238, 220), (236, 236, 232), (232, 240, 250), (250, 244, 200)]
INKS = [(20, 20, 25), (25, 35, 110), (60, 60, 65), (15, 40, 30)]
# EXIF orientation -> the transpose that turns the upright page into the stored pixels
# (the inverse of what ImageOps.exif_transpose applies when reading).
STORE = {1: None, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
EXIF_ORIENTATION = 0x0112


def choose_digits(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(images white-on-black, labels, MNIST indices, route): ``per_class`` per digit, seeded."""
    mnist = load_mnist()
    order = np.random.default_rng(seed).permutation(len(mnist.labels))
    per_digit = [order[mnist.labels[order] == d][:per_class] for d in range(10)]
    if min(map(len, per_digit)) < per_class:
        raise SystemExit(f"MNIST has fewer than {per_class} digits of some class")
    # Rank by rank (the first of every class, then the second, ...): the set for a smaller
    # per_class is a prefix of this one, and a part-written set stays balanced.
    chosen = np.stack(per_digit, axis=1).reshape(-1)
    return mnist.images[chosen], mnist.labels[chosen], chosen, mnist.route


def _lighting(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth multiplicative light field (gradient plus vignette), 0..255, as an 'L' image."""
    small = 32
    y, x = np.mgrid[0:small, 0:small] / (small - 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.1, 0.35) * (np.cos(angle) * x + np.sin(angle) * y)
    vignette = rng.uniform(0.0, 0.25) * (x**2 + y**2)
    light = np.clip(0.95 + gradient - vignette, 0.45, 1.0)
    plane = Image.fromarray(np.rint(light * 255).astype(np.uint8), mode="L")
    return plane.resize((width, height), Image.Resampling.BILINEAR)


def _ink_mask(digit: np.ndarray, rng: np.random.Generator, side: int) -> Image.Image:
    """The digit's ink as an 'L' mask ``side`` px tall (MNIST's 20 px box), rotated, blurred."""
    scale = side / 20  # MNIST digits fill a 20x20 box centred in 28x28
    mask = Image.fromarray(digit, mode="L").resize(
        (round(28 * scale), round(28 * scale)), Image.Resampling.BICUBIC
    )
    mask = mask.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC, expand=True)
    return mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * scale / 10))


def render_photo(digit: np.ndarray, rng: np.random.Generator, width: int, height: int) -> bytes:
    """One simulated phone photo (JPEG bytes, with an EXIF orientation) of a 28 px digit.

    Drawn at half the size, then scaled up (as soft as a phone's optics; four times faster).
    """
    w, h = max(1, width // 2), max(1, height // 2)
    paper = np.array(PAPERS[rng.integers(len(PAPERS))]) + rng.integers(-6, 7, size=3)
    ink = np.array(INKS[rng.integers(len(INKS))]) + rng.integers(-10, 11, size=3)
    light = _lighting(rng, w, h)
    black = Image.new("RGB", (w, h), (0, 0, 0))
    page = Image.composite(Image.new("RGB", (w, h), _colour(paper)), black, light)
    mask = _ink_mask(digit, rng, round(min(w, h) * rng.uniform(0.25, 0.5)))
    left = int(rng.integers(0, max(1, w - mask.width)))
    top = int(rng.integers(0, max(1, h - mask.height)))
    box = (left, top, left + mask.width, top + mask.height)
    opacity = rng.uniform(0.8, 1.0)
    mask = mask.point(lambda v: round(v * opacity))
    ink_patch = Image.composite(
        Image.new("RGB", mask.size, _colour(ink)), black.crop((0, 0, *mask.size)), light.crop(box)
    )
    page.paste(ink_patch, box[:2], mask)
    noise = rng.normal(0, rng.uniform(2, 6), size=(h, w, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(page, dtype=np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    page = Image.fromarray(pixels, mode="RGB")
    orientation = int(rng.choice([1, 6, 8]))
    if STORE[orientation] is not None:
        page = page.transpose(STORE[orientation])
    stored = (width, height) if orientation == 1 else (height, width)
    page = page.resize(stored, Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    out = io.BytesIO()
    page.save(out, format="JPEG", quality=int(rng.integers(85, 95)), exif=exif)
    return out.getvalue()


def _colour(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(values, 0, 255))


def scan_png(digit: np.ndarray) -> bytes:
    """The digit as a clean 28 px scan: dark ink on white, PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(255 - digit, mode="L").save(out, format="PNG")
    return out.getvalue()


def write_set(out: Path, per_class: int, seed: int, width: int, height: int) -> dict:
    """Write photos/ and scans/ under ``out`` (skipping files already there); return info."""
    images, labels, sources, route = choose_digits(per_class, seed)
    for digit, label, source in zip(images, labels, sources, strict=True):
        name = f"mnist{source:05d}"
        photo = out / "photos" / str(label) / f"{name}.jpg"
        scan = out / "scans" / str(label) / f"{name}.png"
        if not photo.is_file():
            # Seeded by the digit itself: its photo does not depend on per_class.
            rng = np.random.default_rng([seed, int(source)])
            photo.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(photo) as tmp:
                tmp.write_bytes(render_photo(digit, rng, width, height))
        if not scan.is_file():
            scan.parent.mkdir(parents=True, exist_ok=True)
            scan.write_bytes(scan_png(digit))
    info = {"per_class": per_class, "seed": seed, "width": width, "height": height}
    info |= {"digits": len(labels), "mnist_route": route}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def photo_files(folder: Path) -> list[Path]:
    """The finished photos under ``folder`` (any depth), sorted; temporaries left out."""
    return sorted(p for p in folder.rglob("*.jpg") if not p.name.startswith("."))


def photo_set(per_class: int) -> tuple[Path, list[Path], dict]:
    """The benchmark set (12 MP, seed 0) cached in the temp folder as ``photo-bench-<per_class>``:
    its folder, its photos and its info."""
    folder = Path(tempfile.gettempdir()) / f"photo-bench-{per_class}"
    info = write_set(folder, per_class, 0, 3024, 4032)
    files = photo_files(folder / "photos")
    if len(files) != 10 * per_class:
        sys.exit(f"ERROR: {folder} holds {len(files)} photos, not {10 * per_class}: delete it")
    return folder, files, info


def example_sheet(out: Path, picture: Path, count: int = 6) -> None:
    """A PNG of ``count`` photos of ``out`` (one per class, upright), what the model sees of each
    with the default preparation, and what it saw before (stretch, no crop, no normalisation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.common.decode import decode_thumbnail
    from stages.common.prep import ImagePrep, decode_image

    files = [photo_files(out / "photos" / str(d))[0] for d in range(count)]
    rows = {
        "photo (12 MP)": [decode_thumbnail(f, 240) for f in files],
        "model input, defaults": [decode_image(f, ImagePrep()) for f in files],
        "model input, before": [
            decode_image(f, ImagePrep(fit="stretch", crop="none", normalise="none")) for f in files
        ],
    }
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.2), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, interpolation="nearest" if r else "antialiased")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    for c, f in enumerate(files):
        with Image.open(f) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        axes[0, c].set_title(f"{f.parent.name} (EXIF {orientation})", fontsize=9)
    fig.tight_layout()
    picture.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(picture, dpi=80, metadata={"Software": None})
    plt.close(fig)
