"""The two UViT blocks. Both are residual, keep their width, and take the conditioning embedding,
which sets a per-example scale and shift after a normalisation (1 + scale, so 0 is identity)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcm_jax.models.layers import CrossAttention, SelfAttention
from mcm_jax.models.norms import norm

# Rematerialisation policies for a block (config.remat; "none" means no rematerialisation).
CHECKPOINT_POLICIES = {
    "full": None,  # save nothing inside a block: recompute all of it on the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ResNetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv; conditioned GroupNorm, SiLU, dropout, 3x3 conv; plus the input.

    Used at the high-resolution levels where attention would be too expensive. fused_norms: each
    norm with its modulation and SiLU as one fused function (norms.py), same parameters.
    """

    channels: int
    norm_groups: int
    dropout: float
    deterministic: bool
    dtype: Any
    fused_norms: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        scale, shift = jnp.split(
            nn.Dense(2 * self.channels, dtype=self.dtype, name="modulation")(embedding), 2, -1
        )
        group_norm = functools.partial(
            norm, fused=self.fused_norms, num_groups=self.norm_groups, dtype=self.dtype,
            activation=nn.silu,
        )
        h = group_norm(x, name="norm_in")
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(h)
        h = group_norm(h, name="norm_out", scale=scale, shift=shift)
        h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        return x + nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_out")(h)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on the pixels of x (batch, height, width, channels) as tokens:
    conditioned LayerNorm, self-attention, dropout; with a text context, LayerNorm,
    cross-attention to the text tokens, dropout; conditioned LayerNorm, MLP (GELU, dropout).

    text is (tokens, attention_mask, has_text) from layers.TextContext, or None: no
    cross-attention and no parameters for it (the block of a model without text conditioning).
    fused_norms: each LayerNorm with its modulation as one fused function (norms.py), same
    parameters.
    """

    channels: int
    head_dim: int
    mlp_ratio: int
    dropout: float
    deterministic: bool
    attention_impl: str
    dtype: Any
    fused_norms: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        embedding: jax.Array,
        text: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        modulation = nn.Dense(4 * self.channels, dtype=self.dtype, name="modulation")(embedding)
        scale_attn, shift_attn, scale_mlp, shift_mlp = jnp.split(modulation, 4, -1)
        layer_norm = functools.partial(
            norm, fused=self.fused_norms, num_groups=None, dtype=self.dtype, affine=False
        )

        h = layer_norm(tokens, name="norm_attn", scale=scale_attn, shift=shift_attn)
        h = SelfAttention(self.head_dim, self.attention_impl, self.dtype, name="attention")(h)
        tokens = tokens + nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        if text is not None:
            tokens = tokens + self._cross_attention(tokens, *text)

        h = layer_norm(tokens, name="norm_mlp", scale=scale_mlp, shift=shift_mlp)
        h = nn.Dense(self.mlp_ratio * self.channels, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dropout(self.dropout)(nn.gelu(h), deterministic=self.deterministic)
        tokens = tokens + nn.Dense(self.channels, dtype=self.dtype, name="mlp_out")(h)
        return tokens.reshape(x.shape)

    def _cross_attention(
        self, tokens: jax.Array, context: jax.Array, mask: jax.Array, has_text: jax.Array
    ) -> jax.Array:
        """The residual branch of cross-attention: LayerNorm, attention to the text, dropout."""
        h = norm(
            tokens, fused=self.fused_norms, name="norm_cross", num_groups=None, dtype=self.dtype
        )
        h = CrossAttention(self.head_dim, self.attention_impl, self.dtype, name="cross_attention")(
            h, context, mask, has_text
        )
        return nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
