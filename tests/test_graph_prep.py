"""The in-graph preparation (``stages/common/graph_prep.py``) against Python's ``prepare_image``.

Tolerance, pixel by pixel: every pixel within 1 grey level of ``prepare_image``'s (float32 in the
graph where numpy computes in float64 changes a rounding now and then), and with the default
preparation at most 1 % of the pixels differ at all. Inputs: small generated phone photos of
real MNIST digits (``bench/photo_data.py``, upright as a client's decoder gives them), and the
degenerate ones a client can send: 1 x 1, a blank page, a 10,000 px side, a grey image and an
RGBA image converted to RGB as ``prepare_image`` converts them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.photo_data import photo_files, write_set
from stages.common.decode import to_rgb
from stages.common.prep import ImagePrep, prepare_image

tf = pytest.importorskip("tensorflow")
graph_prep = pytest.importorskip("stages.common.graph_prep")

PREPS = {
    "defaults": ImagePrep(),
    "center_crop": ImagePrep(fit="center_crop", image_size=32),
    "contrast_stretch": ImagePrep(fit="stretch", normalise="contrast", image_size=32),
    "old_behaviour": ImagePrep(fit="stretch", crop="none", normalise="none", image_size=32),
    "ink_only": ImagePrep(normalise="none", image_size=32),
}
MAX_SHARE_DIFFERING = {"defaults": 0.01}  # others: within 1 grey level, any share


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Six upright photos (240 x 320 and 480 x 640), decoded as a client's decoder does."""
    out = tmp_path_factory.mktemp("graph_prep")
    write_set(out / "small", per_class=1, seed=0, width=240, height=320)
    write_set(out / "large", per_class=1, seed=1, width=480, height=640)
    files = photo_files(out / "small" / "photos")[:3] + photo_files(out / "large" / "photos")[:3]
    decoded = []
    for path in files:
        with Image.open(path) as img:
            decoded.append(np.asarray(ImageOps.exif_transpose(img).convert("RGB")))
    return decoded


def in_graph(prep: ImagePrep):
    spec = [tf.TensorSpec([None, None, 3], tf.uint8)]
    return tf.function(lambda image: graph_prep.prepare(image, prep), input_signature=spec)


def assert_close(got: np.ndarray, want: np.ndarray, max_share: float = 1.0) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    off = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert off.max() <= 1, f"{int((off > 1).sum())} pixels off by more than 1 grey level"
    assert (off > 0).mean() <= max_share, f"{(off > 0).mean():.2%} of the pixels differ"


@pytest.mark.parametrize("name", PREPS)
def test_in_graph_preparation_matches_prepare_image_on_photos(name: str, photos) -> None:
    prep = PREPS[name]
    prepare = in_graph(prep)
    for image in photos:
        want = prepare_image(Image.fromarray(image), prep)
        assert_close(prepare(image).numpy(), want, MAX_SHARE_DIFFERING.get(name, 1.0))


def degenerate_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    page = np.full((400, 300, 3), 236, np.uint8)
    long_side = np.full((40, 10_000, 3), 230, np.uint8)
    long_side[10:30, 4_000:4_400] = 20  # a dark stroke on a very long strip
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[20:40, 30:50] = (10, 10, 10, 255)  # ink on a transparent page: white after compositing
    grey = np.full((90, 70), 250, np.uint8)
    grey[30:60, 30:40] = 0
    return {
        "1x1": Image.fromarray(np.array([[[120, 30, 200]]], np.uint8)),
        "1x1_black": Image.fromarray(np.zeros((1, 1, 3), np.uint8)),
        "blank_page": Image.fromarray(page),
        "noise": Image.fromarray(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)),
        "one_row": Image.fromarray(rng.integers(0, 256, (1, 57, 3), dtype=np.uint8)),
        "10000_px_side": Image.fromarray(long_side),
        "grey": Image.fromarray(grey, mode="L"),
        "rgba": Image.fromarray(rgba, mode="RGBA"),
    }


@pytest.mark.parametrize("prep_name", ["defaults", "old_behaviour"])
def test_degenerate_images_give_what_prepare_image_gives(prep_name: str) -> None:
    """The client converts grey and RGBA to RGB (RGBA onto white, as ``to_rgb`` does); the graph
    then gives the same defined result as Python, never an error inside the graph."""
    prep = PREPS[prep_name]
    prepare = in_graph(prep)
    for name, img in degenerate_images().items():
        client_rgb = np.asarray(to_rgb(img))
        want = prepare_image(img, prep)
        got = prepare(client_rgb).numpy()
        try:
            assert_close(got, want)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None


def test_blank_page_is_used_uncropped_and_white() -> None:
    """No ink: the whole page, normalised to white, as ``prepare_image`` notes ``no_ink_found``."""
    page = np.full((200, 150, 3), 200, np.uint8)
    notes: list[str] = []
    want = prepare_image(Image.fromarray(page), ImagePrep(image_size=32), notes)
    assert notes == ["no_ink_found"]
    got = in_graph(ImagePrep(image_size=32))(page).numpy()
    assert (got == want).all() and (got == 255).all()


def test_resample_matrix_is_pillows_bilinear_and_bicubic() -> None:
    """Resizing alone: Pillow's antialiased shrink and its enlargement, to the grey level."""
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    for kind, resample in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
        for size in ((13, 9), (100, 61), (45, 70)):
            want = np.asarray(Image.fromarray(image).resize(size[::-1], resample))
            got = graph_prep.resize_u8(tf.constant(image, tf.float32), *size, kind).numpy()
            assert np.abs(got - want).max() <= 1, (kind, size)


def test_percentile_is_numpys_linear_percentile() -> None:
    values = np.random.default_rng(2).normal(100, 30, (3, 1001)).astype(np.float32)
    for q in (1, 50, 90, 95, 99.9):
        got = graph_prep.percentile(tf.constant(values), q).numpy()
        assert np.allclose(got, np.percentile(values, q, axis=-1), atol=1e-3), q


def test_graph_prep_names_no_tensorflow_op_outside_tflite_builtins(tmp_path: Path) -> None:
    """The raw-image graph converts with TFLite's built-in ops only (no SELECT_TF_OPS)."""
    prep = ImagePrep(image_size=32)
    function = in_graph(prep)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    (tmp_path / "prep.tflite").write_bytes(converter.convert())  # raises if an op is missing
