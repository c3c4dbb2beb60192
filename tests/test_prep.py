"""Image preparation (``ImagePrep``, ``prepare_image``, ``decode_image``) on synthetic pages.

Each page is drawn here with numpy: paper with a light gradient and noise, a dark object at a
known place. The checks: the object is found where it is, EXIF orientation is applied before
the crop, a blank page is used uncropped with a note, the three fits give the right square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common.errors import PipelineError
from stages.common.prep import ImagePrep, decode_image, ink_box, prepare_image

EXIF_ORIENTATION = 0x0112


def page(width: int = 300, height: int = 400, seed: int = 0) -> np.ndarray:
    """Cream paper, darker towards the bottom right, with a little noise: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    light = 1.0 - 0.25 * (x / width + y / height) / 2
    paper = np.array([245, 235, 210], dtype=float) * light[..., None]
    return np.clip(paper + rng.normal(0, 3, paper.shape), 0, 255).astype(np.uint8)


def draw_l(pixels: np.ndarray, left: int, top: int, side: int) -> tuple[int, int, int, int]:
    """An 'L' of dark-blue ink (stroke side/5) in the square at (left, top); return its box."""
    stroke = side // 5
    pixels[top : top + side, left : left + stroke] = (30, 35, 90)
    pixels[top + side - stroke : top + side, left : left + side] = (30, 35, 90)
    return left, top, left + side, top + side


def dark_box(image: np.ndarray, below: int = 128) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels darker than ``below`` (mean over channels)."""
    rows, cols = np.nonzero(image.mean(axis=2) < below)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_ink_box_finds_the_object_where_it_is() -> None:
    pixels = page()
    box = draw_l(pixels, left=170, top=60, side=80)
    gray = pixels.astype(np.float32).mean(axis=2)
    assert ink_box(gray, margin=0.0, square=False) == box
    left, top, right, bottom = ink_box(gray, margin=0.25, square=False)
    assert (left, top, right, bottom) == (150, 40, 270, 160)  # 20 px (0.25 x 80) each side


def test_crop_to_ink_centres_the_object_with_its_margin() -> None:
    pixels = page()
    draw_l(pixels, left=20, top=290, side=60)  # bottom left, in the darker corner
    prep = ImagePrep(image_size=64, fit="pad", crop="ink", crop_margin=0.15, normalise="contrast")
    out = prepare_image(Image.fromarray(pixels), prep)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    left, top, right, bottom = dark_box(out)
    # The object fills 1 / (1 + 2 * 0.15) of the side, centred (a pixel of resampling slack).
    assert abs((right - left) - 64 / 1.3) <= 2 and abs((bottom - top) - 64 / 1.3) <= 2
    assert abs(left - (64 - right)) <= 2 and abs(top - (64 - bottom)) <= 2
    # Normalised: paper white, ink black, whatever the page's colour and light were.
    assert out[:4, :4].mean() > 240 and out.min() < 20


def test_illumination_removes_the_light_gradient() -> None:
    pixels = page(seed=1)
    draw_l(pixels, left=100, top=150, side=100)
    prep = ImagePrep(image_size=64, crop="none", fit="stretch", normalise="illumination")
    out = prepare_image(Image.fromarray(pixels), prep).astype(int)
    paper = out[out.mean(axis=2) > 128]
    assert paper.mean() > 245 and paper.std() < 8  # the 25 % gradient is gone
    untouched = prepare_image(Image.fromarray(pixels), ImagePrep(64, "stretch", "none", 0, "none"))
    assert untouched[0, 0].mean() - untouched[-1, -1].mean() > 30  # it was there


def test_exif_orientation_is_applied_before_the_crop(tmp_path: Path) -> None:
    upright = page()
    draw_l(upright, left=180, top=40, side=80)  # top right of the upright page
    prep = ImagePrep(image_size=32, fit="pad", crop="ink", crop_margin=0.1, normalise="contrast")
    expected = prepare_image(Image.fromarray(upright), prep).astype(int)
    # A phone stores the pixels rotated and says how to turn them back (6: 90 degrees clockwise).
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "photo.png", exif=exif)
    assert Image.open(tmp_path / "photo.png").size == (400, 300)
    got = decode_image(tmp_path / "photo.png", prep).astype(int)
    assert np.abs(got - expected).mean() < 2
    # Cropping the stored pixels as they are would give a different (rotated) 'L'.
    sideways = prepare_image(stored, prep).astype(int)
    assert np.abs(sideways - expected).mean() > 20


@pytest.mark.parametrize("normalise", ["none", "contrast", "illumination"])
def test_blank_page_is_used_uncropped_with_a_note(normalise: str) -> None:
    blank = Image.fromarray(page(seed=2))
    notes: list[str] = []
    prep = ImagePrep(image_size=32, fit="pad", crop="ink", normalise=normalise)
    out = prepare_image(blank, prep, notes)
    assert out.shape == (32, 32, 3)
    assert notes == ["no_ink_found"]
    uncropped = prepare_image(blank, ImagePrep(32, "pad", "none", 0.15, normalise))
    assert np.array_equal(out, uncropped)


def test_blank_page_is_counted_by_split(tmp_path: Path) -> None:
    from stages.split import decode_source

    paths = []
    for name, draw in (("blank", False), ("digit", True)):
        pixels = page(seed=3)
        if draw:
            draw_l(pixels, 100, 100, 90)
        paths.append(tmp_path / f"{name}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=92)
    _, good, bad, notes = decode_source(
        paths, ["a/blank.jpg", "a/digit.jpg"], ImagePrep(image_size=32), tmp_path / "x.npy"
    )
    assert good == [0, 1] and bad == {}
    assert notes == [["no_ink_found"], []]  # each item's notes, in order


def halves(width: int, height: int) -> Image.Image:
    """Left half black, right half white (a wide or tall image)."""
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[:, : width // 2] = 0
    return Image.fromarray(pixels)


def fit_only(fit: str, size: int = 32) -> ImagePrep:
    return ImagePrep(image_size=size, fit=fit, crop="none", normalise="none")


def test_stretch_keeps_the_old_behaviour_exactly() -> None:
    img = Image.fromarray(page(120, 90))
    expected = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(prepare_image(img, fit_only("stretch")), expected)


def test_pad_center_crop_and_stretch_shapes() -> None:
    wide = halves(120, 40)  # 3:1
    for fit in ("pad", "center_crop", "stretch"):
        assert prepare_image(wide, fit_only(fit)).shape == (32, 32, 3)
    stretched = prepare_image(wide, fit_only("stretch")).mean(axis=2)
    assert stretched[:, :14].max() < 10 and stretched[:, 18:].min() > 245  # halves stay halves
    cropped = prepare_image(wide, fit_only("center_crop")).mean(axis=2)
    assert cropped[:, :14].max() < 10 and cropped[:, 18:].min() > 245  # the middle 40x40
    padded = prepare_image(halves(40, 120), fit_only("pad")).mean(axis=2)  # tall: pad sides
    # The page colour (median of the border) pads: 40 of 120 px wide -> 1/3 of the square.
    content = np.flatnonzero(np.abs(np.diff(padded[16])) > 50)
    assert len(content) >= 1 and 9 <= content[0] <= 12


def test_prep_round_trips_through_its_dict_and_names_missing_keys() -> None:
    prep = ImagePrep(image_size=48, fit="center_crop", crop="none", crop_margin=0.2)
    assert ImagePrep.from_params(prep.as_dict()) == prep
    assert ImagePrep.from_params({**prep.as_dict(), "source": "folder", "folder": "x"}) == prep
    with pytest.raises(PipelineError, match=r"lack \['normalise'\].*dvc repro split"):
        ImagePrep.from_params({k: v for k, v in prep.as_dict().items() if k != "normalise"})


def test_split_decodes_many_files_in_worker_processes_with_the_same_result(tmp_path: Path) -> None:
    from stages.split import PARALLEL_FROM, _decode_all, decode_source

    paths, names = [], []
    for i in range(PARALLEL_FROM + 6):
        pixels = page(80, 100, seed=i)
        if i % 7:
            draw_l(pixels, 10 + i % 30, 20, 40)  # every 7th page stays blank
        paths.append(tmp_path / f"{i:03d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
        names.append(f"a/{i:03d}.jpg")
    paths[5].write_bytes(b"")  # a reason other than the default must survive the trip back
    prep = ImagePrep(image_size=32)
    images, good, bad, notes = decode_source(paths, names, prep, tmp_path / "x.npy")
    assert bad == {"empty_file": ["a/005.jpg"]}
    assert [i for i, n in enumerate(notes) if "no_ink_found" in n] == list(range(0, len(paths), 7))
    assert good == [i for i in range(len(paths)) if i != 5]
    one_by_one = [decode_image(p, prep) for i, p in enumerate(paths) if i != 5]
    assert np.array_equal(images[good], np.stack(one_by_one))
    assert len(list(_decode_all(paths[:3], prep))) == 3  # few files: no workers


def test_thumbnail_of_the_original_keeps_its_aspect_and_fills_the_square() -> None:
    from stages.common.decode import thumbnail

    scan = thumbnail(Image.fromarray(np.full((28, 28), 255, np.uint8)), 96)
    assert scan.shape == (96, 96, 3) and scan.min() == 255  # a small scan fills it
    photo = thumbnail(Image.fromarray(page(300, 400)), 96)  # portrait: black bars at the sides
    assert photo[:, :5].max() == 0 and photo[:, -5:].max() == 0 and photo[:, 20:76].min() > 100
