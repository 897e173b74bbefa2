"""Building pieces of the UViT: conditioning embedding, position embedding, attention, and the
preparation of a text encoder's token embeddings for text conditioning."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Fourier periods of the log-SNR embedding. The longest period is larger than twice the typical
# log-SNR range [-20, 20], so the slowest (sin, cos) pair alone already tells every log-SNR apart;
# the shortest resolves differences of ~0.01. Frequencies are spaced geometrically in between.
LOGSNR_MAX_PERIOD = 128.0
LOGSNR_MIN_PERIOD = 0.125
POSITION_MAX_PERIOD = 10_000.0
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
CUDNN_MIN_COMPUTE_CAPABILITY = 8.0


def logsnr_fourier_features(logsnr: jax.Array, num_features: int) -> jax.Array:
    """(batch,) log-SNR -> (batch, num_features) sin/cos features, in float32."""
    periods = np.geomspace(LOGSNR_MAX_PERIOD, LOGSNR_MIN_PERIOD, num_features // 2)
    angles = logsnr.astype(jnp.float32)[:, None] * (2 * np.pi / periods).astype(np.float32)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_position_embedding(height: int, width: int, channels: int) -> np.ndarray:
    """Fixed 2-D position embedding, (height * width, channels): a quarter of the channels each for
    sin and cos of the row and of the column index. No parameters, so any resolution works."""
    per_axis = -(-channels // 4)
    frequencies = POSITION_MAX_PERIOD ** (-np.arange(per_axis) / per_axis)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    row_angles = rows.reshape(-1, 1) * frequencies
    col_angles = cols.reshape(-1, 1) * frequencies
    features = [np.sin(row_angles), np.cos(row_angles), np.sin(col_angles), np.cos(col_angles)]
    return np.concatenate(features, axis=-1)[:, :channels].astype(np.float32)


class ConditioningEmbedding(nn.Module):
    """log-SNR (Fourier features -> MLP) plus a label embedding, one vector per example.

    The label table has num_classes + 1 rows; row num_classes is the null label used for
    classifier-free guidance and for unconditional models (num_classes = 0).
    """

    width: int
    fourier_features: int
    num_classes: int
    dtype: Any

    @nn.compact
    def __call__(
        self, logsnr: jax.Array, label: jax.Array, pooled_text: jax.Array | None = None
    ) -> jax.Array:
        """pooled_text (batch, text_width), from TextContext, adds a bias-free projection (so the
        null prompt's zero pooled embedding adds nothing); None (no text conditioning) adds no
        parameters, leaving the network exactly as without text."""
        features = logsnr_fourier_features(logsnr, self.fourier_features).astype(self.dtype)
        time = nn.Dense(self.width, dtype=self.dtype, name="time_in")(features)
        time = nn.Dense(self.width, dtype=self.dtype, name="time_out")(nn.silu(time))
        label_table = nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype, name="label")
        embedding = time + label_table(label)
        if pooled_text is not None:
            embedding = embedding + nn.Dense(
                self.width, use_bias=False, dtype=self.dtype, name="text_pooled"
            )(pooled_text)
        return nn.silu(embedding)


def choose_attention_implementation(requested: str, dtype: Any, head_dim: int) -> str:
    """'xla' or 'cudnn' for jax.nn.dot_product_attention.

    'auto' takes cuDNN flash attention where it applies (GPU of compute capability >= 8.0,
    bfloat16/float16, head_dim a multiple of 8 and <= 128): the XLA path materialises the
    (tokens x tokens) score matrix and is about half as fast on an H100.
    """
    on_gpu = jax.default_backend() == "gpu"
    if requested == "cudnn" and not on_gpu:
        raise ValueError(
            f"attention_impl: 'cudnn' needs a GPU backend, got {jax.default_backend()!r}; use 'auto'"
        )
    if requested != "auto":
        return requested
    if not on_gpu:
        return "xla"
    capability = float(getattr(jax.devices()[0], "compute_capability", 0.0))
    fits = dtype in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
    return "cudnn" if fits and capability >= CUDNN_MIN_COMPUTE_CAPABILITY else "xla"


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (batch, length, channels), fused qkv projection."""

    head_dim: int
    attention_impl: str
    dtype: Any

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        batch, length, channels = tokens.shape
        heads = channels // self.head_dim
        qkv = nn.Dense(3 * channels, dtype=self.dtype, name="qkv")(tokens)
        query, key, value = jnp.split(
            qkv.reshape(batch, length, 3 * heads, self.head_dim), 3, axis=2
        )
        implementation = choose_attention_implementation(
            self.attention_impl, self.dtype, self.head_dim
        )
        attended = jax.nn.dot_product_attention(query, key, value, implementation=implementation)
        return nn.Dense(channels, dtype=self.dtype, name="out")(
            attended.reshape(batch, length, channels)
        )


class TextContext(nn.Module):
    """Prepares a text encoder's token embeddings (batch, length, text_width) and padding mask
    (batch, length), True for real tokens, for cross-attention and the pooled embedding.

    The tokens are layer-normalised (encoders' outputs have large, uneven scales), then padding
    tokens are zeroed so that nothing downstream can see their values. Returns
    (tokens, attention_mask, has_text, pooled):
    - attention_mask: the padding mask, except that a prompt with no real token (the null prompt)
      keeps its first (zeroed) token so that no attention row is fully masked (which could give
      NaN in a fused kernel); its cross-attention output is then dropped through has_text;
    - has_text (batch,): whether the prompt has at least one real token;
    - pooled (batch, text_width): masked mean of the tokens, 0 for the null prompt.
    """

    dtype: Any

    @nn.compact
    def __call__(
        self, text: jax.Array, text_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        tokens = nn.LayerNorm(dtype=self.dtype, name="norm")(text.astype(self.dtype))
        tokens = jnp.where(text_mask[..., None], tokens, jnp.zeros((), self.dtype))
        count = jnp.sum(text_mask, axis=1)
        has_text = count > 0
        first = jnp.arange(text_mask.shape[1]) == 0
        attention_mask = text_mask | (~has_text[:, None] & first[None, :])
        pooled = jnp.sum(tokens.astype(jnp.float32), axis=1) / jnp.maximum(count, 1)[:, None]
        return tokens, attention_mask, has_text, pooled.astype(self.dtype)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens (batch, length, channels) to a text context
    (batch, text_length, text_width), see TextContext: masked keys get no attention weight, and
    examples without text (has_text False, the null prompt) get exactly 0."""

    head_dim: int
    attention_impl: str
    dtype: Any

    @nn.compact
    def __call__(
        self, tokens: jax.Array, context: jax.Array, mask: jax.Array, has_text: jax.Array
    ) -> jax.Array:
        batch, length, channels = tokens.shape
        heads = channels // self.head_dim
        query = nn.Dense(channels, dtype=self.dtype, name="q")(tokens)
        key_value = nn.Dense(2 * channels, dtype=self.dtype, name="kv")(context)
        key, value = jnp.split(
            key_value.reshape(batch, context.shape[1], 2 * heads, self.head_dim), 2, axis=2
        )
        implementation = choose_attention_implementation(
            self.attention_impl, self.dtype, self.head_dim
        )
        mask = mask[:, None, None, :]  # (batch, heads, query, key), broadcast over heads, queries
        if implementation == "cudnn":  # cuDNN turns the mask into a bias of full (query, key) size
            mask = jnp.broadcast_to(mask, (batch, 1, length, context.shape[1]))
        attended = jax.nn.dot_product_attention(
            query.reshape(batch, length, heads, self.head_dim),
            key,
            value,
            mask=mask,
            implementation=implementation,
        )
        out = nn.Dense(channels, dtype=self.dtype, name="out")(
            attended.reshape(batch, length, channels)
        )
        return jnp.where(has_text[:, None, None], out, jnp.zeros((), out.dtype))


class ConcatDense(nn.Module):
    """nn.Dense of the concatenation of its inputs on the last axis, without making it:
    concatenate([h, skip]) @ W + b computed as h @ W[:c] + skip @ W[c:] + b (the UViT's skip
    merge, config.model.split_skip_dense), which saves writing and reading the concatenated
    activation (and, on the backward pass, slicing its cotangent). The parameters are those of the
    nn.Dense it replaces (`kernel` (sum of widths, features), lecun-normal; `bias`, zeros;
    float32), so either restores the other's checkpoint; computes in `dtype` as nn.Dense does."""

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, *inputs: jax.Array) -> jax.Array:
        widths = [x.shape[-1] for x in inputs]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (sum(widths), self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        *inputs, kernel, bias = nn.dtypes.promote_dtype(*inputs, kernel, bias, dtype=self.dtype)
        parts = jnp.split(kernel, np.cumsum(widths)[:-1], axis=0)
        out = sum(x @ part for x, part in zip(inputs, parts))
        return out + bias
