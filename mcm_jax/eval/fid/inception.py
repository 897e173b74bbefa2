"""The FID Inception-v3 (pytorch-fid's pt_inception-2015-12-05) in Flax Linen.

Exactly the network of `pytorch_fid.inception.InceptionV3([3])` with `use_fid_inception=True`:
torchvision's Inception3 stem and blocks with the FID patches (average pools that exclude the
padding, a max pool in the last block), up to the 2048-d global average pool. Eval-mode
BatchNorm is folded into each convolution by the converter, so every conv has a bias here.
Parameter names follow the torch state dict: `Mixed_5b.branch1x1.conv.weight` lives at
`params["Mixed_5b"]["branch1x1"]["conv"]["kernel"]` (HWIO).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_RESOLUTION = 299
FEATURE_DIM = 2048
# How the convolutions multiply float32 numbers: "highest", full float32 (the parity reference);
# "bf16_3x", three bfloat16 products summed in float32 (see `bf16_3x_conv`); "default", the
# backend's fastest (bfloat16 on TPU, TF32 on NVIDIA GPUs): not the FID path, TF32 misses 1e-3.
PRECISIONS = ("highest", "bf16_3x", "default")


def _split_bf16(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x ~= hi + lo with hi, lo bfloat16: hi keeps x's top 8 mantissa bits, lo the next 8."""
    hi = x.astype(jnp.bfloat16)
    return hi, (x - hi.astype(jnp.float32)).astype(jnp.bfloat16)


def bf16_3x_conv(lhs: jax.Array, rhs: jax.Array, *args, precision=None, **kwargs) -> jax.Array:
    """`jax.lax.conv_general_dilated` of float32 operands from three bfloat16 convolutions with
    float32 accumulation: hi*hi + (hi*lo + lo*hi), each operand split by `_split_bf16`. The
    dropped lo*lo term is ~2^-16 of the product, so the result is close to float32 (~16 mantissa
    bits) at the speed of bfloat16 tensor cores, where TF32 keeps only 10 bits."""
    del precision  # the splitting sets it
    conv = lambda a, b: jax.lax.conv_general_dilated(
        a, b, *args, preferred_element_type=jnp.float32, **kwargs
    )
    lhs_hi, lhs_lo = _split_bf16(lhs)
    rhs_hi, rhs_lo = _split_bf16(rhs)
    return conv(lhs_hi, rhs_hi) + (conv(lhs_hi, rhs_lo) + conv(lhs_lo, rhs_hi))


def fid_precision() -> str:
    """The FID path's precision on this backend: "bf16_3x" on GPUs (float32 convolutions there
    run either as TF32, off by more than 1e-3, or on the slow float32 units), "highest"
    elsewhere (exact float32 is the fastest on CPUs, and TPUs run it as six bfloat16 passes)."""
    return "bf16_3x" if jax.default_backend() == "gpu" else "highest"


def _conv_arguments(precision: str) -> dict:
    """nn.Conv's arguments for one of PRECISIONS."""
    if precision == "bf16_3x":
        return {"conv_general_dilated": bf16_3x_conv}
    lax_precision = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}
    return {"precision": lax_precision[precision]}


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d (conv, BatchNorm eps 1e-3, ReLU) with the BatchNorm folded in."""

    features: int
    kernel_size: Sequence[int]
    strides: int = 1
    padding: Sequence[int] = (0, 0)
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = nn.Conv(
            self.features,
            tuple(self.kernel_size),
            strides=self.strides,
            padding=[(p, p) for p in self.padding],
            name="conv",
            **_conv_arguments(self.precision),
        )
        return nn.relu(conv(x))


def _avg_pool_3x3_excluding_padding(x: jax.Array) -> jax.Array:
    """TensorFlow's average pool: padded zeros do not count (torch count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d."""

    pool_features: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(64, (1, 1), name="branch1x1")(x)
        branch5x5 = conv(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
        branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = conv(self.pool_features, (1, 1), name="branch_pool")(
            _avg_pool_3x3_excluding_padding(x)
        )
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (unpatched in pytorch-fid)."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch3x3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
        branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """Mixed_6b/c/d/e: factorised 7x7 convolutions."""

    channels_7x7: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        branch1x1 = conv(192, (1, 1), name="branch1x1")(x)
        branch7x7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        branch7x7dbl = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_excluding_padding(x))
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8 (unpatched in pytorch-fid)."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch3x3 = conv(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (average pool, FIDInceptionE_1) and Mixed_7c (max pool, FIDInceptionE_2)."""

    max_pool_branch: bool
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(320, (1, 1), name="branch1x1")(x)
        branch3x3 = conv(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        branch3x3dbl = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl),
            ],
            axis=-1,
        )
        if self.max_pool_branch:
            # The FID graph max-pools here (padding acts as -inf, as in torch's max_pool2d).
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_excluding_padding(x)
        branch_pool = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: [-1, 1] NHWC images (normally 299x299) -> (N, 2048) pool features."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = FIDInceptionA(32, precision=self.precision, name="Mixed_5b")(x)
        x = FIDInceptionA(64, precision=self.precision, name="Mixed_5c")(x)
        x = FIDInceptionA(64, precision=self.precision, name="Mixed_5d")(x)
        x = InceptionB(precision=self.precision, name="Mixed_6a")(x)
        x = FIDInceptionC(128, precision=self.precision, name="Mixed_6b")(x)
        x = FIDInceptionC(160, precision=self.precision, name="Mixed_6c")(x)
        x = FIDInceptionC(160, precision=self.precision, name="Mixed_6d")(x)
        x = FIDInceptionC(192, precision=self.precision, name="Mixed_6e")(x)
        x = InceptionD(precision=self.precision, name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool_branch=False, precision=self.precision, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool_branch=True, precision=self.precision, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


@functools.cache
def param_shapes() -> dict:
    """The parameter pytree's structure as ShapeDtypeStructs (nothing is allocated; cached)."""
    images = jax.ShapeDtypeStruct((1, INCEPTION_RESOLUTION, INCEPTION_RESOLUTION, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), images)["params"]


def _torch_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize (align_corners=False, no antialias).

    Follows ATen's upsample kernel in float32: src = scale * (dst + 0.5) - 0.5 with
    scale = in / out, clamped at 0; the upper tap is clamped to the last pixel.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    lower = src.astype(np.int32)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = src - lower.astype(np.float32)
    return lower, upper, upper_weight


def resize_bilinear_like_torch(images: jax.Array, height: int, width: int) -> jax.Array:
    """`F.interpolate(x, (height, width), mode="bilinear", align_corners=False)` on NHWC floats.

    Torch samples two taps per axis whatever the scale (no antialiasing when downsampling),
    unlike jax.image.resize, so this gathers the taps explicitly.
    """
    in_height, in_width = images.shape[1], images.shape[2]
    if (in_height, in_width) == (height, width):
        return images  # torch's weights are exactly (1, 0) here.
    lower, upper, w = (jnp.asarray(a) for a in _torch_bilinear_taps(in_height, height))
    w = w[None, :, None, None]
    images = (1 - w) * images[:, lower] + w * images[:, upper]
    lower, upper, w = (jnp.asarray(a) for a in _torch_bilinear_taps(in_width, width))
    w = w[None, None, :, None]
    return (1 - w) * images[:, :, lower] + w * images[:, :, upper]


def preprocess(images_uint8_nhwc: jax.Array) -> jax.Array:
    """pytorch-fid's input path: /255 (ToTensor), bilinear resize to 299, then 2x - 1."""
    x = images_uint8_nhwc.astype(jnp.float32) / 255.0
    x = resize_bilinear_like_torch(x, INCEPTION_RESOLUTION, INCEPTION_RESOLUTION)
    return 2 * x - 1


def uint8_from_model_range(images: jax.Array | np.ndarray) -> jax.Array:
    """[-1, 1] float NHWC images (data pipeline, samplers) -> uint8 RGB for `features`.

    Rounds to the nearest level, so images that came from uint8 data get their exact pixels
    back; one grey channel is repeated to RGB, as pytorch-fid's PIL convert("RGB") does.
    """
    pixels = jnp.clip(jnp.round((jnp.asarray(images, jnp.float32) + 1) * 127.5), 0, 255)
    pixels = pixels.astype(jnp.uint8)
    return jnp.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def check_images(images: jax.Array | np.ndarray) -> None:
    """Fail before any compute unless images are uint8 NHWC with 3 channels."""
    if images.dtype != np.uint8:
        raise TypeError(f"images: expected dtype uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape (N, H, W, 3) NHWC, got {images.shape}")


@functools.partial(jax.jit, static_argnames="precision")
def _preprocessed_features(params: dict, images: jax.Array, precision: str) -> jax.Array:
    return InceptionV3(precision=precision).apply({"params": params}, images)


@jax.jit
def _jit_preprocess(images_uint8_nhwc: jax.Array) -> jax.Array:
    return preprocess(images_uint8_nhwc)


def features(
    params: dict, images_uint8_nhwc: jax.Array | np.ndarray, *, precision: str | None = None
) -> jax.Array:
    """FID pool features (N, 2048) float32 of uint8 NHWC images of any size, as pytorch-fid.

    Preprocessing and the network compile separately, so inputs of several sizes share one
    compiled 299x299 network. `precision` (one of PRECISIONS; default `fid_precision()`) sets
    how the convolutions multiply.
    """
    check_images(images_uint8_nhwc)
    precision = precision or fid_precision()
    return _preprocessed_features(params, _jit_preprocess(images_uint8_nhwc), precision)
