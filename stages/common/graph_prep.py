"""``prepare_image`` in TensorFlow ops: a raw decoded image -> the model's prepared input, in-graph.

The exported raw-image models (SavedModel signature ``classify_image``, ``classify_image.tflite``,
``classify_image.onnx``) carry this graph, so a client passes the decoded photo and nothing else.
``stages.common.prep.prepare_image`` (Python, Pillow) stays the reference; this module
re-implements each of its steps with the same constants and the same arithmetic:

* Pillow's resize (``_reduce``: bicubic, ``fit_square``: bilinear, both antialiased when
  shrinking) as two dense resampling matrices, horizontal pass first, each pass rounded to 8 bits
  with Pillow's 22-bit fixed-point coefficients, as Pillow does;
* ``background``: per-cell 90th percentiles (numpy's linear interpolation), the 3x3 median of
  the grid with edge padding, and Pillow's float bilinear interpolation back to full size;
* ``ink_box``: the 99.9th percentile of how much darker than the page each pixel is, the 3x3
  median filter of the ink mask (edge pixels repeated, as Pillow's ``MedianFilter``), the box;
* illumination, the 1st..95th percentile stretch, and the ``pad`` / ``center_crop`` / ``stretch`` fit.

Only elementwise maths, ``MatMul``, ``TopKV2`` (sorting and percentiles), gathers, slices,
reshapes and pads: every op is a TFLite built-in and has an ONNX counterpart. Data-dependent
choices (no ink found, a side under 32 or 48 px) are computed both ways and selected with
``where``, so there is no control flow in the graph. The input contract: one decoded uint8 RGB
image ``(height, width, 3)`` of at least 1 x 1 pixel, upright (EXIF orientation applied by the
client's decoder), grey or RGBA converted to RGB by the client (RGBA composited onto white, as
``prepare_image`` does). The differences to Python are float rounding: float32 here where numpy
uses float64 (a pixel off by one grey level now and then; ``tests/test_graph_prep.py``).
"""

from __future__ import annotations

from fractions import Fraction

import tensorflow as tf

from stages.common.prep import (
    ANALYSIS_SIDE,
    INK_FRACTION,
    MIN_INK_CONTRAST,
    PAPER_PERCENTILE,
    ImagePrep,
)

PRECISION_BITS = 22  # Pillow's fixed-point coefficients for 8-bit resampling (32 - 8 - 2)
GRAY = (0.299, 0.587, 0.114)  # the weights of ``prepare_image``'s grey level
FILTERS = {"bilinear": 1.0, "bicubic": 2.0}  # Pillow's filter supports


def _filter(x: tf.Tensor, kind: str) -> tf.Tensor:
    """Pillow's ``bilinear_filter`` (triangle) or ``bicubic_filter`` (a = -0.5)."""
    x = tf.abs(x)
    if kind == "bilinear":
        return tf.maximum(1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def resample_matrix(size_in, size_out, kind: str, fixed_point: bool) -> tf.Tensor:
    """(size_out, size_in) weights of Pillow's resampling along one axis (``precompute_coeffs``).

    Output pixel ``i`` is centred on ``(i + 0.5) * scale`` in the input; the filter is stretched by
    the scale when shrinking (antialiasing); each row is normalised to sum 1. ``fixed_point``:
    the weights rounded to Pillow's 22-bit integers, as its 8-bit passes use them.
    """
    size_in_f = tf.cast(size_in, tf.float32)
    scale = size_in_f / tf.cast(size_out, tf.float32)
    filterscale = tf.maximum(scale, 1.0)
    support = FILTERS[kind] * filterscale
    centre = (tf.cast(tf.range(size_out), tf.float32) + 0.5) * scale
    j = tf.cast(tf.range(size_in), tf.float32)
    # Pillow's window: xmin = (int)(centre - support + 0.5), xmax = (int)(centre + support + 0.5)
    lo = tf.maximum(tf.floor(centre - support + 0.5), 0.0)
    hi = tf.minimum(tf.floor(centre + support + 0.5), size_in_f)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    weights = _filter((j[None, :] - centre[:, None] + 0.5) / filterscale, kind)
    weights = tf.where(inside, weights, tf.zeros_like(weights))
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = tf.math.divide_no_nan(weights, total)
    if fixed_point:
        # 2**22 as 2**11 twice: a float16 TFLite stores its constants in float16 (max 65504)
        half = float(1 << (PRECISION_BITS // 2))
        scaled = weights * half * half
        rounded = tf.where(scaled < 0, -tf.floor(-scaled + 0.5), tf.floor(scaled + 0.5))
        weights = rounded / half / half
    return weights


def _round_u8(x: tf.Tensor) -> tf.Tensor:
    """Pillow's 8-bit pass result: round half up, clip to 0..255 (still float32)."""
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def resize_u8(image: tf.Tensor, height, width, kind: str) -> tf.Tensor:
    """Pillow's ``resize`` of an 8-bit (h, w, 3) image (float32 holding 0..255) to (height, width).

    Horizontal pass, rounded to 8 bits, then the vertical pass, rounded: Pillow's order.
    """
    shape = tf.shape(image)
    across = resample_matrix(shape[1], width, kind, fixed_point=True)  # (width, w)
    down = resample_matrix(shape[0], height, kind, fixed_point=True)  # (height, h)
    planes = tf.transpose(image, [2, 0, 1])  # (3, h, w)
    planes = _round_u8(tf.matmul(planes, tf.transpose(across)[None]))  # (3, h, width)
    planes = _round_u8(tf.matmul(down[None], planes))  # (3, height, width)
    return tf.transpose(planes, [1, 2, 0])


def resize_float(plane: tf.Tensor, height, width) -> tf.Tensor:
    """Pillow's bilinear ``resize`` of a float ('F' mode) 2-D array: no rounding."""
    shape = tf.shape(plane)
    across = resample_matrix(shape[1], width, "bilinear", fixed_point=False)
    down = resample_matrix(shape[0], height, "bilinear", fixed_point=False)
    return tf.matmul(tf.matmul(down, plane), tf.transpose(across))


def percentile(values: tf.Tensor, q: float) -> tf.Tensor:
    """``np.percentile(values, q, axis=-1)`` (linear interpolation) along the last axis.

    The position ``q / 100 * (n - 1)`` is split into its integer and fractional parts with
    integer arithmetic (q is a fraction with a small denominator), so it is exact for any n.
    """
    fraction = Fraction(str(q)) / 100
    num, den = fraction.numerator, fraction.denominator
    n = tf.shape(values)[-1]
    scaled = num * (n - 1)
    lower = scaled // den
    frac = tf.cast(scaled - lower * den, tf.float32) / den
    upper = tf.minimum(lower + 1, n - 1)
    # The k largest values cover ascending positions n - k .. n - 1: enough for lower and upper.
    k = n - lower
    largest = tf.math.top_k(values, k=k, sorted=True).values  # descending
    a = tf.gather(largest, k - 1, axis=-1)  # ascending position ``lower``
    b = tf.gather(largest, n - 1 - upper, axis=-1)
    diff = b - a
    return tf.where(frac >= 0.5, b - diff * (1.0 - frac), a + diff * frac)


def _low_percentile(values: tf.Tensor, q: float) -> tf.Tensor:
    """``percentile`` for a small q: the few smallest values are enough (top_k of the negation)."""
    return -percentile(-values, 100.0 - q)


def _median9(stack: tf.Tensor) -> tf.Tensor:
    """The median of 9 values along the last axis (the 5th largest)."""
    return tf.math.top_k(stack, k=5, sorted=True).values[..., 4]


def _edge_pad(x: tf.Tensor) -> tf.Tensor:
    """A 2-D array with its first and last rows and columns repeated once (numpy's ``edge``)."""
    x = tf.concat([x[:1], x, x[-1:]], axis=0)
    return tf.concat([x[:, :1], x, x[:, -1:]], axis=1)


def _shifts3x3(x: tf.Tensor) -> tf.Tensor:
    """The 9 neighbours of every element of a 2-D array (edge-padded), stacked last."""
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    padded = _edge_pad(x)
    return tf.stack([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)


def paper_grid(channel: tf.Tensor) -> tf.Tensor:
    """``prep._paper_grid``: the page's level per cell, then the 3x3 median of the grid."""
    h, w = tf.shape(channel)[0], tf.shape(channel)[1]
    short = tf.minimum(h, w)
    count = tf.clip_by_value(short // 24, 1, 8)
    stride = tf.maximum(1, short // 128)
    rows = tf.range(0, h, stride)
    cols = tf.range(0, w, stride)
    sampled = tf.gather(tf.gather(channel, rows, axis=0), cols, axis=1)
    ch, cw = tf.shape(rows)[0] // count, tf.shape(cols)[0] // count
    cells = tf.reshape(sampled[: ch * count, : cw * count], [count, ch, count, cw])
    cells = tf.reshape(tf.transpose(cells, [0, 2, 1, 3]), [count, count, ch * cw])
    grid = percentile(cells, PAPER_PERCENTILE)
    return _median9(_shifts3x3(grid))


def background(channel: tf.Tensor) -> tf.Tensor:
    """``prep.background``: the page level under every pixel of a 2-D float array."""
    shape = tf.shape(channel)
    return resize_float(paper_grid(channel), shape[0], shape[1])


def _median_filter_mask(mask: tf.Tensor) -> tf.Tensor:
    """Pillow's ``MedianFilter(3)`` of a 0/1 mask: 1 where at least 5 of the 3x3 are 1."""
    return tf.reduce_sum(_shifts3x3(tf.cast(mask, tf.float32)), axis=-1) >= 5.0


def _first_last(flags: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(any, first index, last index + 1) of a 1-D bool tensor (0, 0 when none)."""
    n = tf.shape(flags)[0]
    as_int = tf.cast(flags, tf.int32)
    first = tf.cast(tf.argmax(as_int, output_type=tf.int32), tf.int32)
    last = n - tf.cast(tf.argmax(tf.reverse(as_int, [0]), output_type=tf.int32), tf.int32)
    return tf.reduce_any(flags), first, last


def ink_box(gray: tf.Tensor, margin: float, square: bool):
    """``prep.ink_box``: (found, left, top, right, bottom), int32 scalars; the whole image when
    no ink stands out (found is False)."""
    h, w = tf.shape(gray)[0], tf.shape(gray)[1]
    short = tf.minimum(h, w)
    darker = tf.maximum(background(gray) - gray, 0.0)
    flat = tf.reshape(darker, [1, -1])
    peak = tf.where(short >= 32, percentile(flat, 99.9)[0], tf.reduce_max(darker))
    mask = darker > tf.maximum(INK_FRACTION * peak, MIN_INK_CONTRAST / 2)
    mask = tf.where(short >= 48, _median_filter_mask(mask), mask)
    has_rows, top, bottom = _first_last(tf.reduce_any(mask, axis=1))
    _, left, right = _first_last(tf.reduce_any(mask, axis=0))
    found = (peak >= MIN_INK_CONTRAST) & has_rows
    top_f, bottom_f, left_f, right_f = (tf.cast(v, tf.float32) for v in (top, bottom, left, right))
    grow = margin * tf.cast(tf.maximum(bottom - top, right - left), tf.float32)
    half_w = (right_f - left_f) / 2 + grow
    half_h = (bottom_f - top_f) / 2 + grow
    if square:
        half_w = half_h = tf.maximum(half_w, half_h)
    cx, cy = (left_f + right_f) / 2, (top_f + bottom_f) / 2
    box = (
        tf.maximum(0, tf.cast(tf.floor(cx - half_w), tf.int32)),
        tf.maximum(0, tf.cast(tf.floor(cy - half_h), tf.int32)),
        tf.minimum(w, tf.cast(tf.math.ceil(cx + half_w), tf.int32)),
        tf.minimum(h, tf.cast(tf.math.ceil(cy + half_h), tf.int32)),
    )
    whole = (tf.constant(0), tf.constant(0), w, h)
    return (found, *(tf.where(found, b, a) for b, a in zip(box, whole, strict=True)))


def stretch(array: tf.Tensor) -> tf.Tensor:
    """``prep._stretch``: each channel from its 1st..95th percentile to 0..255, truncated."""
    channels = tf.transpose(tf.reshape(array, [-1, 3]))  # (3, n)
    lo = _low_percentile(channels, 1)
    hi = percentile(channels, 95)
    flat = hi - lo < 1.0
    lo = tf.where(flat, 0.0, lo)
    scale = tf.where(flat, 1.0, 255.0 / tf.maximum(hi - lo, 1.0))
    return tf.floor(tf.clip_by_value((array - lo) * scale + 0.5, 0.0, 255.0))


def _reduced_size(height, width, side: int):
    """``prep._reduce``'s output size: the long side at most ``side``, aspect kept."""
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = side / tf.maximum(h_f, w_f)
    shrink = scale < 1.0
    new_h = tf.maximum(1, tf.cast(tf.round(h_f * scale), tf.int32))  # round half to even
    new_w = tf.maximum(1, tf.cast(tf.round(w_f * scale), tf.int32))
    return tf.where(shrink, new_h, height), tf.where(shrink, new_w, width)


def border_colour(image: tf.Tensor) -> tf.Tensor:
    """``prep._border_colour``: the median of the outermost pixels per channel, truncated."""
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)  # (n, 3)
    values = tf.transpose(border)  # (3, n), n even (2 w + 2 h)
    n = tf.shape(values)[-1]
    largest = tf.math.top_k(values, k=n // 2 + 1, sorted=True).values
    middle = (largest[:, n // 2] + largest[:, n // 2 - 1]) / 2.0
    return tf.floor(middle)


def fit_square(image: tf.Tensor, fit: str, size: int) -> tf.Tensor:
    """``prep.fit_square`` of an 8-bit (h, w, 3) float image: square by ``fit``, then resized."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if fit == "center_crop":
        side = tf.minimum(h, w)
        left, top = (w - side) // 2, (h - side) // 2
        image = image[top : top + side, left : left + side]
    elif fit == "pad":
        side = tf.maximum(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        colour = border_colour(image)
        inside = tf.pad(
            tf.ones([h, w, 1]), [[top, side - h - top], [left, side - w - left], [0, 0]]
        )
        shifted = tf.pad(image, [[top, side - h - top], [left, side - w - left], [0, 0]])
        image = shifted * inside + colour * (1.0 - inside)
    return resize_u8(image, size, size, "bilinear")


def prepare(image: tf.Tensor, prep: ImagePrep) -> tf.Tensor:
    """One decoded uint8 RGB image (h, w, 3) -> ``prepare_image``'s (size, size, 3) uint8.

    ``prep`` is fixed when the graph is traced (it is the model's, from ``prep.json``).
    """
    rgb = tf.cast(image, tf.float32)
    if prep.crop == "none" and prep.normalise == "none":
        return tf.cast(fit_square(rgb, prep.fit, prep.image_size), tf.uint8)
    shape = tf.shape(rgb)
    height, width = _reduced_size(shape[0], shape[1], max(ANALYSIS_SIDE, prep.draft_size))
    array = resize_u8(rgb, height, width, "bicubic")
    box = None
    if prep.crop == "ink":
        gray = tf.tensordot(array, tf.constant(GRAY, tf.float32), axes=1)
        _, *box = ink_box(gray, prep.crop_margin, square=prep.fit == "pad")
    if prep.normalise == "illumination":
        page = tf.stack([background(array[..., c]) for c in range(3)], axis=-1)
        array = array / tf.maximum(page, 1.0) * 255.0
    if box is not None:
        left, top, right, bottom = box
        array = array[top:bottom, left:right]
    if prep.normalise == "none":
        pixels = tf.clip_by_value(tf.round(array), 0.0, 255.0)
    else:
        pixels = stretch(array)
    return tf.cast(fit_square(pixels, prep.fit, prep.image_size), tf.uint8)
