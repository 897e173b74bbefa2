"""Model size and cost: parameter count (traced, nothing allocated) and analytic forward FLOPs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mcm_jax.models.configs import RESNET, TRANSFORMER
from mcm_jax.models.uvit import build
from mcm_jax.models.validation import validate


def param_count(
    config: ml_collections.ConfigDict,
    resolution: int,
    *,
    channels: int,
    num_classes: int,
    text_width: int = 0,
) -> int:
    """Number of parameters of the model for `channels`-channel images at `resolution`,
    `num_classes` classes and prompts of `text_width` (0: none), through jax.eval_shape.

    Traced with XLA attention: the parameters do not depend on the attention kernel, and tracing
    cuDNN attention needs a GPU. A text-conditioned model is traced with a one-token text (its
    parameters do not depend on the text length).
    """
    validate(config, resolution)
    config = ml_collections.ConfigDict(config)
    config.attention_impl = "xla"
    model = build(config, channels=channels, num_classes=num_classes, text_width=text_width)

    def init():
        z = jnp.zeros((1, resolution, resolution, channels), jnp.float32)
        ones = jnp.ones((1,), jnp.float32)
        text = {}
        if text_width:
            text = dict(
                text=jnp.zeros((1, 1, text_width), jnp.float32),
                text_mask=jnp.ones((1, 1), bool),
            )
        return model.init(
            jax.random.PRNGKey(0), z, ones, ones.astype(jnp.int32), train=False, **text
        )

    shapes = jax.eval_shape(init)
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))


def _dense(tokens: int, fan_in: int, fan_out: int) -> float:
    return 2.0 * tokens * fan_in * fan_out


def _resnet_block(pixels: int, width: int, embedding_width: int) -> float:
    convs = 2 * _dense(pixels, 9 * width, width)
    return convs + _dense(1, embedding_width, 2 * width)


def _transformer_block(tokens: int, width: int, embedding_width: int, mlp_ratio: int) -> float:
    projections = _dense(tokens, width, 3 * width) + _dense(tokens, width, width)
    scores_and_mixing = 2 * _dense(tokens, tokens, width)  # QK^T and AV, summed over heads
    mlp = 2 * _dense(tokens, width, mlp_ratio * width)
    return projections + scores_and_mixing + mlp + _dense(1, embedding_width, 4 * width)


def _cross_attention(tokens: int, width: int, text_length: int, text_width: int) -> float:
    """q, kv and output projections and the two attention matmuls, over every text position
    (padding included: it is computed, then masked)."""
    projections = 2 * _dense(tokens, width, width) + _dense(text_length, text_width, 2 * width)
    return projections + 2 * _dense(tokens, text_length, width)


def flops_per_example(
    config: ml_collections.ConfigDict,
    resolution: int,
    *,
    channels: int,
    text: tuple[int, int] | None = None,
) -> float:
    """Forward FLOPs of one `channels`-channel example at `resolution` (a multiply-add is 2 FLOPs),
    with prompts of text = (length, width) (length includes padding; None: no text).

    Counts dense layers, convolutions and the two attention matmuls (QK^T, AV); leaves out
    normalisations, activations, softmax, pooling and other elementwise work.
    """
    validate(config, resolution)
    text_length, text_width = text or (0, 0)
    if text is not None and not all(isinstance(n, int) and n >= 1 for n in text):
        raise ValueError(f"text: (length, width) must be integers >= 1, got {text!r}")
    width_e = config.embedding_width

    def block(kind: str, pixels: int, width: int) -> float:
        if kind == RESNET:
            return _resnet_block(pixels, width, width_e)
        flops = _transformer_block(pixels, width, width_e, config.mlp_ratio)
        if text_width:
            flops += _cross_attention(pixels, width, text_length, text_width)
        return flops

    first_pixels = resolution**2
    widths = (*config.level_channels, config.middle_channels)
    total = _dense(1, config.fourier_features, width_e) + _dense(1, width_e, width_e)
    if text_width:
        total += _dense(1, text_width, width_e)  # the pooled text projection
    total += 2 * _dense(first_pixels, 9 * channels, widths[0])  # input and output convs

    for level, (kind, blocks) in enumerate(zip(config.level_kinds, config.level_blocks)):
        pixels, width = first_pixels // 4**level, widths[level]
        down_proj = _dense(pixels, widths[level - 1], width) if level > 0 else 0.0
        up_proj = _dense(pixels // 4, widths[level + 1], width)  # before upsampling
        skip_merges = blocks * _dense(pixels, 2 * width, width)
        total += down_proj + up_proj + skip_merges + 2 * blocks * block(kind, pixels, width)

    middle_pixels = first_pixels // 4 ** len(config.level_kinds)
    total += _dense(middle_pixels, widths[-2], config.middle_channels)
    total += config.middle_blocks * block(TRANSFORMER, middle_pixels, config.middle_channels)
    return float(total)
