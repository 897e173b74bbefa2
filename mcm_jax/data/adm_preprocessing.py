"""ADM's ImageNet preprocessing in TensorFlow (guided-diffusion's `center_crop_arr`), PIL-exact;
caption data (mcm_jax/data/captions.py) is cropped and resized with it too.

ADM (Dhariwal & Nichol, 2021) makes its ImageNet 64/128 training images with PIL: decode; while
the short side is at least twice the target, halve both sides (`size // 2`) with BOX; then
BICUBIC-resize so the short side equals the target (the other side `round(side * scale)`); then
take the centred square. TF's own resize kernels differ from PIL's exactly where it matters here
(PIL's box includes a pixel lying on the window's right edge, which odd sizes hit), so this module
ports Pillow's resampler (libImaging/Resample.c, 8-bit path): per output pixel, the same float64
filter window and weights, the same 22-bit fixed-point coefficients, horizontal pass then
vertical, each rounded to uint8. Decoding and resizing equal PIL's bit for bit (the tests compare
them with Pillow).
"""

import tensorflow as tf

_PRECISION_BITS = 22  # Pillow: 32 - 8 - 2


def _box(x: tf.Tensor) -> tf.Tensor:
    return tf.cast((x > -0.5) & (x <= 0.5), tf.float64)


def _bicubic(x: tf.Tensor) -> tf.Tensor:
    """Keys cubic with a = -0.5, written as Pillow evaluates it."""
    a = -0.5
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


_FILTERS = {"box": (_box, 0.5), "bicubic": (_bicubic, 2.0)}  # (filter, support)


def _coefficients(in_size: tf.Tensor, out_size: tf.Tensor, kernel: str):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`.

    Returns (indices, weights), both (out_size, taps): input pixel of each tap and its int32
    fixed-point weight (zero for taps past the window).
    """
    filter_fn, filter_support = _FILTERS[kernel]
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filter_support * filterscale
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    # C's (int) cast truncates; the clamp to 0 makes it equal to floor here.
    xmin = tf.maximum(tf.math.floor(center - support + 0.5), 0.0)
    xmax = tf.minimum(tf.math.floor(center + support + 0.5), in_f) - xmin
    x = tf.cast(tf.range(taps), tf.float64)
    position = x[None, :] + xmin[:, None]
    inside = x[None, :] < xmax[:, None]
    w = tf.where(inside, filter_fn((position - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    w = tf.math.divide_no_nan(w, total)
    fixed = tf.sign(w) * tf.math.floor(tf.abs(w) * (1 << _PRECISION_BITS) + 0.5)
    indices = tf.minimum(tf.cast(position, tf.int32), in_size - 1)
    return indices, tf.cast(fixed, tf.int32)


def _resample_rows(image: tf.Tensor, size: tf.Tensor, kernel: str) -> tf.Tensor:
    """One Pillow 8-bit pass along the first axis of a uint8 (N, M, C) image.

    Working on the leading axis keeps the gathered rows contiguous, which makes the pass fast.
    """
    indices, weights = _coefficients(tf.shape(image)[0], size, kernel)
    window = tf.cast(tf.gather(image, indices), tf.int32)  # (size, taps, M, C)
    total = tf.reduce_sum(window * weights[:, :, None, None], axis=1)
    total += 1 << (_PRECISION_BITS - 1)
    pixels = tf.clip_by_value(tf.bitwise.right_shift(total, _PRECISION_BITS), 0, 255)
    return tf.cast(pixels, tf.uint8)


def _pil_resize(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor, kernel: str) -> tf.Tensor:
    """PIL's `Image.resize((width, height), resample)` of a uint8 (H, W, C) image: the
    horizontal pass, then the vertical one, as Pillow did when ADM ran."""
    columns = _resample_rows(tf.transpose(image, [1, 0, 2]), width, kernel)  # (width, H, C)
    return _resample_rows(tf.transpose(columns, [1, 0, 2]), height, kernel)


def decode_jpeg_like_pil(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, 3) pixels of a JPEG, equal to PIL's `Image.open(f).convert("RGB")`.

    TF's default IDCT is libjpeg's fast integer one; PIL uses the accurate one (JDCT_ISLOW).
    """
    return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")


def decode_like_pil(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, 3) pixels of a JPEG (as `decode_jpeg_like_pil`), PNG, GIF or BMP, equal to
    PIL's `Image.open(f).convert("RGB")` for JPEG and opaque PNG."""
    pixels = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: decode_jpeg_like_pil(encoded),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    return tf.ensure_shape(pixels, (None, None, 3))


def center_crop_adm(image: tf.Tensor, resolution: int) -> tf.Tensor:
    """ADM's `center_crop_arr` of a uint8 (H, W, C) image: a uint8 (resolution, resolution, C)."""
    channels = image.shape[-1]

    def halve(x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        return _pil_resize(x, shape[0] // 2, shape[1] // 2, "box")

    (pixels,) = tf.while_loop(
        lambda x: tf.reduce_min(tf.shape(x)[:2]) >= 2 * resolution,
        lambda x: (halve(x),),
        (image,),
        shape_invariants=(tf.TensorShape([None, None, channels]),),
    )
    # ADM: round(side * resolution / short_side) in float64; Python's round is half to even.
    hw = tf.cast(tf.shape(pixels)[:2], tf.float64)
    new_hw = tf.cast(tf.round(hw * (resolution / tf.reduce_min(hw))), tf.int32)
    pixels = _pil_resize(pixels, new_hw[0], new_hw[1], "bicubic")
    top = (new_hw[0] - resolution) // 2
    left = (new_hw[1] - resolution) // 2
    square = pixels[top : top + resolution, left : left + resolution]
    return tf.ensure_shape(square, (resolution, resolution, channels))
