"""The two UViT blocks. Both are residual, keep their width, and take the conditioning embedding,
which sets a per-example scale and shift after a normalisation (1 + scale, so 0 is identity)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcm_jax.models.layers import CrossAttention, SelfAttention

# Rematerialisation policies for a block (config.remat; "none" means no rematerialisation).
CHECKPOINT_POLICIES = {
    "full": None,  # save nothing inside a block: recompute all of it on the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _modulate(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


class ResNetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv; conditioned GroupNorm, SiLU, dropout, 3x3 conv; plus the input.

    Used at the high-resolution levels where attention would be too expensive.
    """

    channels: int
    norm_groups: int
    dropout: float
    deterministic: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        scale, shift = jnp.split(
            nn.Dense(2 * self.channels, dtype=self.dtype, name="modulation")(embedding), 2, -1
        )
        h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype, name="norm_in")(x))
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(h)
        h = nn.GroupNorm(self.norm_groups, dtype=self.dtype, name="norm_out")(h)
        h = nn.silu(_modulate(h, scale[:, None, None], shift[:, None, None]))
        h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        return x + nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_out")(h)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on the pixels of x (batch, height, width, channels) as tokens:
    conditioned LayerNorm, self-attention, dropout; with a text context, LayerNorm,
    cross-attention to the text tokens, dropout; conditioned LayerNorm, MLP (GELU, dropout).

    text is (tokens, attention_mask, has_text) from layers.TextContext, or None: no
    cross-attention and no parameters for it (the block of a model without text conditioning).
    """

    channels: int
    head_dim: int
    mlp_ratio: int
    dropout: float
    deterministic: bool
    attention_impl: str
    dtype: Any

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        embedding: jax.Array,
        text: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        modulation = nn.Dense(4 * self.channels, dtype=self.dtype, name="modulation")(embedding)
        scale_attn, shift_attn, scale_mlp, shift_mlp = jnp.split(modulation[:, None], 4, -1)

        h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm_attn")(
            tokens
        )
        h = SelfAttention(self.head_dim, self.attention_impl, self.dtype, name="attention")(
            _modulate(h, scale_attn, shift_attn)
        )
        tokens = tokens + nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        if text is not None:
            tokens = tokens + self._cross_attention(tokens, *text)

        h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm_mlp")(tokens)
        h = nn.Dense(self.mlp_ratio * self.channels, dtype=self.dtype, name="mlp_in")(
            _modulate(h, scale_mlp, shift_mlp)
        )
        h = nn.Dropout(self.dropout)(nn.gelu(h), deterministic=self.deterministic)
        tokens = tokens + nn.Dense(self.channels, dtype=self.dtype, name="mlp_out")(h)
        return tokens.reshape(x.shape)

    def _cross_attention(
        self, tokens: jax.Array, context: jax.Array, mask: jax.Array, has_text: jax.Array
    ) -> jax.Array:
        """The residual branch of cross-attention: LayerNorm, attention to the text, dropout."""
        h = nn.LayerNorm(dtype=self.dtype, name="norm_cross")(tokens)
        h = CrossAttention(self.head_dim, self.attention_impl, self.dtype, name="cross_attention")(
            h, context, mask, has_text
        )
        return nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
