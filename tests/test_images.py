"""Decoding real files of every odd kind and scanning real folders: common/decode.py, scan.py.

Every fixture is generated here (Pillow, numpy, a few hand-made PNG and JPEG headers).
"""

from __future__ import annotations

import os
import struct
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import png_bytes, scanlines, snapshot, write_images
from PIL import Image

from stages.common.decode import MAX_PIXELS, ImageError
from stages.common.errors import PipelineError
from stages.common.prep import ImagePrep, decode_image
from stages.common.scan import SKIP_REASONS, scan_folder

# The pipeline's behaviour before the image-preparation params: every format case below is
# about decoding, not about cropping or normalising.
PLAIN = {"fit": "stretch", "crop": "none", "normalise": "none"}


def plain(size: int = 32) -> ImagePrep:
    return ImagePrep(image_size=size, **PLAIN)


def decode(path: Path, size: int = 32) -> np.ndarray:
    out = decode_image(path, plain(size))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    return out


# --- Bit depths and colour modes ---------------------------------------------------------------


def test_16_bit_grayscale_png_spanning_full_range_spans_0_to_255(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode == "I;16"  # really 16-bit on disk
    out = decode(tmp_path / "ramp16.png")
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0), "the ramp stays monotonic"
    assert np.array_equal(out[..., 0], out[..., 2]), "gray stays gray"
    assert abs(int(out[0, 16, 0]) - round(ramp[0, 16] / 257)) <= 1


def test_dark_16_bit_image_is_not_stretched(tmp_path):
    """A 16-bit scan of dark paper stays dark: 16-bit means 65535 is white, whatever the max."""
    dark = np.full((32, 32), 4096, dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert decode(tmp_path / "dark16.png").max() == 16  # 4096 / 65535 * 255


def test_16_bit_rgb_png_is_reduced_to_8_bits(tmp_path):
    pixels = np.zeros((32, 32, 3), dtype=">u2")
    pixels[..., 0] = np.linspace(0, 65535, 32).round().astype(int)[None, :]
    pixels[..., 2] = 65535
    (tmp_path / "rgb16.png").write_bytes(png_bytes(32, 32, 16, 2, scanlines(pixels)))
    out = decode(tmp_path / "rgb16.png")
    assert out[0, 0].tolist() == [0, 0, 255] and out[0, -1].tolist() == [255, 0, 255]


@pytest.mark.parametrize(
    ("values", "expected_max"),
    [(np.arange(256), 255), (np.arange(0, 65536, 257), 255), (np.arange(0, 1 << 20, 4097), 255)],
    ids=["8-bit-values", "16-bit-values", "wider"],
)
def test_32_bit_integer_tiff_is_scaled_by_its_bit_range(tmp_path, values, expected_max):
    array = np.resize(values, (32, 32)).astype(np.int32)
    Image.fromarray(array).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    out = decode(tmp_path / "i32.tif")
    assert out.min() == 0 and out.max() == expected_max


def test_float_tiff_in_unit_range(tmp_path):
    array = np.resize(np.linspace(0, 1, 64, dtype=np.float32), (32, 32))
    Image.fromarray(array).save(tmp_path / "f32.tif")
    assert Image.open(tmp_path / "f32.tif").mode == "F"
    out = decode(tmp_path / "f32.tif")
    assert out.min() == 0 and out.max() == 255


def cmyk_quadrants() -> Image.Image:
    """Four 16x16 blocks: white, cyan, black, red, in CMYK."""
    img = Image.new("CMYK", (32, 32))
    for (x, y), ink in {
        (0, 0): (0, 0, 0, 0),
        (16, 0): (255, 0, 0, 0),
        (0, 16): (0, 0, 0, 255),
        (16, 16): (0, 255, 255, 0),
    }.items():
        img.paste(ink, (x, y, x + 16, y + 16))
    return img


def test_cmyk_jpeg_comes_out_in_the_right_colours(tmp_path):
    cmyk_quadrants().save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = decode(tmp_path / "cmyk.jpg").astype(int)
    for (y, x), rgb in {
        (8, 8): (255, 255, 255),
        (8, 24): (0, 255, 255),
        (24, 8): (0, 0, 0),
        (24, 24): (255, 0, 0),
    }.items():
        assert np.abs(out[y, x] - rgb).max() <= 12, (y, x, out[y, x])


def left_white_right_black(width: int = 40, height: int = 20) -> np.ndarray:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = 255
    return pixels


@pytest.mark.parametrize(
    ("orientation", "white_side"),
    [(1, "left"), (3, "right"), (6, "top"), (8, "bottom")],
)
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, orientation, white_side, suffix):
    """Phones store photos unrotated with an Orientation tag; the image must come out upright."""
    img = Image.fromarray(left_white_right_black())
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    img.save(path, exif=exif)
    assert Image.open(path).getexif()[0x0112] == orientation
    out = decode(path).astype(float).mean(axis=2)
    halves = {
        "left": out[:, :16].mean() - out[:, 16:].mean(),
        "right": out[:, 16:].mean() - out[:, :16].mean(),
        "top": out[:16].mean() - out[16:].mean(),
        "bottom": out[16:].mean() - out[:16].mean(),
    }
    assert halves[white_side] > 200, halves


def test_rgba_png_transparent_background_is_composited_on_white(tmp_path):
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[:, :, 0] = 255  # transparent red: the colour under alpha 0 must not show
    pixels[:, 16:] = (0, 0, 0, 255)  # opaque black ink on the right
    pixels[:, 15] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "ink.png")
    out = decode(tmp_path / "ink.png").astype(int)
    assert (out[:, :15] == 255).all(), "transparent -> white paper"
    assert (out[:, 16:] == 0).all(), "opaque ink stays black"
    assert (np.abs(out[:, 15] - 127) <= 1).all(), "half alpha -> mid gray"


def test_gray_alpha_png_is_composited_on_white(tmp_path):
    pixels = np.zeros((32, 32, 2), dtype=np.uint8)
    pixels[:, 16:, 1] = 255
    Image.fromarray(pixels, mode="LA").save(tmp_path / "la.png")
    out = decode(tmp_path / "la.png")
    assert (out[:, :16] == 255).all() and (out[:, 16:] == 0).all()


def test_palette_gif_with_transparent_index_is_composited_on_white(tmp_path):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 255, 0] + [0, 0, 0] * 255)  # index 0: green, index 1: black
    img.paste(1, (16, 0, 32, 32))
    img.save(tmp_path / "p.gif", transparency=0)
    assert "transparency" in Image.open(tmp_path / "p.gif").info
    out = decode(tmp_path / "p.gif")
    assert (out[:, :16] == 255).all(), "the transparent (green) index -> white"
    assert (out[:, 16:] == 0).all()


def test_grayscale_png_with_transparent_colour_is_composited_on_white(tmp_path):
    pixels = np.full((32, 32), 7, dtype=np.uint8)
    pixels[:, 16:] = 0
    Image.fromarray(pixels, mode="L").save(tmp_path / "trns.png", transparency=7)
    out = decode(tmp_path / "trns.png")
    assert (out[:, :16] == 255).all() and (out[:, 16:] == 0).all()


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("1", ".bmp"),
        ("L", ".bmp"),
        ("P", ".png"),
        ("RGB", ".webp"),
        ("RGB", ".tiff"),
        ("RGB", ".jpeg"),
    ],
)
def test_plain_modes_and_formats_round_trip(tmp_path, mode, suffix):
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, 16:] = 255
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).convert(mode).save(
        path, **({"lossless": True} if suffix == ".webp" else {})
    )
    out = decode(path).astype(int)
    assert out[:, :14].max() <= 10 and out[:, 18:].min() >= 245


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("L", (32, 32), 0), Image.new("L", (32, 32), 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert decode(tmp_path / "anim.gif").max() == 0


def test_large_image_is_downscaled_to_size(tmp_path):
    pixels = np.zeros((600, 800, 3), dtype=np.uint8)
    pixels[:, 400:] = 255
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    out = decode(tmp_path / "big.jpg", size=64).astype(int)
    assert out[:, :28].max() <= 10 and out[:, 36:].min() >= 245


# --- Files that are not usable images: a message naming the file, and a reason --------------


def truncated(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def noisy_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def jpeg_claiming(tmp_path: Path, width: int, height: int) -> Path:
    """A real small JPEG whose frame header (SOF0) is patched to claim width x height."""
    path = noisy_image(tmp_path / "claims.jpg")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def corrupted(path: Path) -> Path:
    """Overwrite 16 bytes in the middle of the file (inside the compressed pixel data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16
    return write(path, bytes(data))


BAD_FILES = {
    "zero_byte": (lambda d: write(d / "empty.png", b""), "empty_file"),
    "text_as_png": (lambda d: write(d / "notes.png", "shopping list"), "unreadable_image"),
    "html_as_jpg": (lambda d: write(d / "page.jpg", "<html>404</html>"), "unreadable_image"),
    "random_bytes_as_bmp": (
        lambda d: write(d / "r.bmp", bytes(range(256)) * 4),
        "unreadable_image",
    ),
    "truncated_png": (lambda d: truncated(noisy_image(d / "cut.png")), "unreadable_image"),
    "truncated_jpeg": (lambda d: truncated(noisy_image(d / "cut.jpg")), "unreadable_image"),
    "corrupt_png": (lambda d: corrupted(noisy_image(d / "bad.png")), "unreadable_image"),
    "png_bomb_100000x100000": (
        lambda d: write(d / "bomb.png", png_bytes(100_000, 100_000, 8, 0, None)),
        "too_large",
    ),
    "png_10000x10000": (
        lambda d: write(d / "b10k.png", png_bytes(10_000, 10_000, 8, 0, None)),
        "too_large",
    ),
    "jpeg_bomb_65000x65000": (lambda d: jpeg_claiming(d, 65_000, 65_000), "too_large"),
    "missing": (lambda d: d / "gone.png", "not_a_regular_file"),
    "folder_named_png": (lambda d: (d / "dir.png").mkdir() or d / "dir.png", "not_a_regular_file"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_unusable_file_raises_image_error_naming_it(tmp_path, kind):
    make, reason = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        decode_image(path, plain())
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}: ")
    assert reason in SKIP_REASONS
    message = str(info.value)
    assert any(word in message.lower() for word in ("delete", "downscale")), "says what to do"


def test_image_just_above_max_pixels_is_refused_before_decoding(tmp_path):
    """A real, valid 8001x8000 PNG (a few KB on disk, 64 MB of pixels) is refused unread."""
    width, height = 8001, 8000
    assert width * height > MAX_PIXELS
    rows = (b"\x00" + bytes((width + 7) // 8)) * height  # 1-bit black, unfiltered
    path = tmp_path / "poster.png"
    path.write_bytes(png_bytes(width, height, 1, 0, rows))
    assert path.stat().st_size < 100_000
    assert Image.open(path).size == (width, height)
    with pytest.raises(ImageError, match=rf"8001x8000 pixels is more than the {MAX_PIXELS:,}"):
        decode_image(path, plain())


def test_header_at_exactly_max_pixels_passes_the_size_check(tmp_path):
    """The limit is inclusive: 8000x8000 is not refused for its size (here: no pixel data)."""
    path = tmp_path / "exact.png"
    path.write_bytes(png_bytes(8000, 8000, 8, 0, None))
    with pytest.raises(ImageError) as info:
        decode_image(path, plain())
    assert info.value.reason == "unreadable_image"


# --- Scanning folders --------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A folder as people have them: strays, odd names, links, nesting, a pipe."""
    root = tmp_path / "raw"
    write_images(root, {"cat": 3, "영": 2, "big dog": 2})
    outside = tmp_path / "elsewhere"
    write_images(outside, {"x": 2})
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / "cat" / "._img_000.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (root / "cat" / "notes.txt").write_text("good cats")
    (root / "cat" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "README.md").write_text("my data")
    (root / "loose.png").write_bytes((root / "cat" / "img_000.png").read_bytes())
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "cat" / "2019").mkdir()
    (root / "cat" / "2019" / "old.png").write_bytes((root / "cat" / "img_001.png").read_bytes())
    (root / "cat" / "linked_out.png").symlink_to(outside / "x" / "img_000.png")
    (root / "cat" / "linked_in.png").symlink_to(root / "영" / "img_000.png")
    (root / "cat" / "dangling.png").symlink_to(root / "cat" / "deleted.png")
    (root / "outside_class").symlink_to(outside / "x", target_is_directory=True)
    os.mkfifo(root / "cat" / "pipe.png")
    return root


def test_scan_sorts_classes_and_skips_every_kind_of_stray(messy):
    scan = scan_folder(messy)
    assert scan.classes == ["big dog", "cat", "영"]
    files = [(str(p.relative_to(messy)), label) for p, label in scan.files]
    assert files == [
        ("big dog/img_000.png", 0),
        ("big dog/img_001.png", 0),
        ("cat/img_000.png", 1),
        ("cat/img_001.png", 1),
        ("cat/img_002.png", 1),
        ("cat/linked_in.png", 1),
        ("영/img_000.png", 2),
        ("영/img_001.png", 2),
    ]
    assert {k: sorted(v) for k, v in scan.skipped.items()} == {
        "hidden_or_system_file": sorted(
            [
                ".DS_Store",
                ".git",
                "Thumbs.db",
                "__MACOSX",
                "cat/.DS_Store",
                "cat/._img_000.png",
                "cat/desktop.ini",
            ]
        ),
        "other_extension": ["cat/IMG_0001.HEIC", "cat/notes.txt"],
        "outside_class_folder": ["README.md", "loose.png"],
        "nested_folder": ["cat/2019"],
        "symlink_outside": ["cat/linked_out.png", "outside_class"],
        "not_a_regular_file": ["cat/dangling.png", "cat/pipe.png"],
    }
    assert set(scan.skipped) <= set(SKIP_REASONS)


def test_scanning_and_decoding_never_write_into_the_folder(messy):
    before = snapshot(messy)
    scan = scan_folder(messy)
    for path, _ in scan.files:
        decode_image(path, plain())
    assert snapshot(messy) == before


def test_class_names_are_nfc_normalised(tmp_path):
    """macOS writes Korean names decomposed (NFD); the class name is the composed (NFC) one."""
    nfd = unicodedata.normalize("NFD", "영")
    assert nfd != "영"
    write_images(tmp_path, {nfd: 1, "a": 1})
    assert scan_folder(tmp_path).classes == ["a", "영"]


def test_two_folders_differing_only_in_normalisation_are_an_error(tmp_path):
    write_images(tmp_path, {"영": 1, unicodedata.normalize("NFD", "영"): 1})
    with pytest.raises(PipelineError, match=r"several class folders named \['영'\]"):
        scan_folder(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(PipelineError, match=r"data.folder '.*nope' does not exist\. Create it"):
        scan_folder(tmp_path / "nope")


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "raw").write_text("x")
    with pytest.raises(PipelineError, match=r"data.folder '.*raw' is a file, not a folder"):
        scan_folder(tmp_path / "raw")


def test_empty_root_has_no_classes(tmp_path):
    scan = scan_folder(tmp_path)
    assert scan.classes == [] and scan.files == [] and scan.skipped == {}
