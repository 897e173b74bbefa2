"""Normalisation fused with what follows it in a UViT block: GroupNorm or LayerNorm, the
conditioning's modulation `(1 + scale) * h + shift` and the activation, as one function with a
hand-written backward pass (config.model.fused_norms).

Why: composed from flax's nn.GroupNorm / nn.LayerNorm, jnp and jax's autodiff, a bf16 network
keeps activation-sized float32 intermediates of the normalisation (the input promoted to float32,
its centred copy, the normalised output) for the backward pass. `norm_modulate` keeps only its
bf16 input and the float32 statistics of each group (mean and 1/std, two numbers per group and
example) and recomputes the rest on the backward pass, where it is cheap elementwise work that XLA
fuses with the reductions of the gradient. The statistics take one pass: the mean and the mean of
squares in float32 (as nn.GroupNorm's use_fast_variance), the variance clipped at 0.

`Norm` is the flax module: the same parameters (names, shapes, initialisers) as the nn.GroupNorm
or nn.LayerNorm it replaces, so a checkpoint of either path restores into the other, and
`norm` picks between the fused module and the flax composition it replaces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

EPSILON = 1e-6  # nn.GroupNorm's and nn.LayerNorm's default
Activation = Callable[[jax.Array], jax.Array] | None


def _statistics(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(mean, 1 / sqrt(var + EPSILON)) over `axes`, float32, kept as size-1 axes; one pass."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axes, keepdims=True)
    variance = jnp.maximum(jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean), 0.0)
    return mean, jax.lax.rsqrt(variance + EPSILON)


def _f32(a: jax.Array | None) -> jax.Array | None:
    return None if a is None else a.astype(jnp.float32)


def _pre_activation(x, mean, inv_std, gamma, beta, scale, shift):
    """(normalised n, affine v = n * gamma + beta, modulated u = v * (1 + scale) + shift), f32."""
    n = (x.astype(jnp.float32) - mean) * inv_std
    v = n if gamma is None else n * _f32(gamma)
    v = v if beta is None else v + _f32(beta)
    u = v if scale is None else v * (1 + _f32(scale))
    u = u if shift is None else u + _f32(shift)
    return n, v, u


def _sum_to(t: jax.Array, like: jax.Array | None) -> jax.Array | None:
    """`t` summed over the axes where `like` has size 1 (its broadcast), in `like`'s dtype."""
    if like is None:
        return None
    axes = tuple(i for i, (a, b) in enumerate(zip(like.shape, t.shape)) if a == 1 and b != 1)
    return jnp.sum(t, axes, keepdims=True).astype(like.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _norm_modulate(x, gamma, beta, scale, shift, axes, activation, dtype):
    return _forward(x, gamma, beta, scale, shift, axes, activation, dtype)[0]


def _forward(x, gamma, beta, scale, shift, axes, activation, dtype):
    mean, inv_std = _statistics(x, axes)
    _, _, u = _pre_activation(x, mean, inv_std, gamma, beta, scale, shift)
    y = u if activation is None else activation(u)
    return y.astype(dtype), (x, mean, inv_std, gamma, beta, scale, shift)


def _backward(axes, activation, dtype, residuals, dy):
    x, mean, inv_std, gamma, beta, scale, shift = residuals
    n, v, u = _pre_activation(x, mean, inv_std, gamma, beta, scale, shift)
    du = dy.astype(jnp.float32)
    if activation is not None:
        du = jax.vjp(activation, u)[1](du)[0]
    dv = du if scale is None else du * (1 + _f32(scale))
    dn = dv if gamma is None else dv * _f32(gamma)
    # n = (x - mean) * inv_std with both statistics functions of x's group:
    dx = inv_std * (
        dn - jnp.mean(dn, axes, keepdims=True) - n * jnp.mean(dn * n, axes, keepdims=True)
    )
    return (
        dx.astype(x.dtype), _sum_to(dv * n, gamma), _sum_to(dv, beta), _sum_to(du * v, scale),
        _sum_to(du, shift),
    )


_norm_modulate.defvjp(_forward, _backward)


def norm_modulate(
    x: jax.Array,
    *,
    num_groups: int | None,
    gamma: jax.Array | None = None,
    beta: jax.Array | None = None,
    scale: jax.Array | None = None,
    shift: jax.Array | None = None,
    activation: Activation = None,
    dtype: Any = None,
) -> jax.Array:
    """activation(((norm(x) * gamma + beta) * (1 + scale) + shift)), computed in float32, in
    `dtype` (default x's).

    x: (batch, ..., channels). num_groups: GroupNorm's groups (statistics over every axis but the
    batch, per group of channels), or None: LayerNorm (statistics over the channels of each
    position). gamma, beta: (channels,), the norm's affine parameters, or None. scale, shift:
    (batch, channels), the per-example modulation, or None. activation: elementwise, or None.
    The backward pass keeps x and the per-group statistics only (see the module docstring).
    """
    batch, channels = x.shape[0], x.shape[-1]
    groups = 1 if num_groups is None else num_groups
    grouped = x.reshape(batch, -1, groups, channels // groups)
    axes = (3,) if num_groups is None else (1, 3)
    per_channel = lambda a: None if a is None else a.reshape(1, 1, groups, -1)
    per_example = lambda a: None if a is None else a.reshape(batch, 1, groups, -1)
    out = _norm_modulate(
        grouped, per_channel(gamma), per_channel(beta), per_example(scale), per_example(shift),
        axes, activation, jnp.dtype(dtype or x.dtype),
    )
    return out.reshape(x.shape)


class Norm(nn.Module):
    """GroupNorm (num_groups) or LayerNorm (num_groups None) with the modulation and activation
    that follow it, fused (`norm_modulate`). Its parameters, with `affine`, are nn.GroupNorm's and
    nn.LayerNorm's: `scale` (ones) and `bias` (zeros), (channels,), float32; without, none."""

    num_groups: int | None
    affine: bool = True
    activation: Activation = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, scale: jax.Array | None = None, shift: jax.Array | None = None
    ) -> jax.Array:
        """scale, shift: (batch, channels), the conditioning's modulation, or None."""
        gamma = beta = None
        if self.affine:
            gamma = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
            beta = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return norm_modulate(
            x, num_groups=self.num_groups, gamma=gamma, beta=beta, scale=scale, shift=shift,
            activation=self.activation, dtype=self.dtype,
        )


def norm(
    x: jax.Array,
    *,
    fused: bool,
    name: str,
    num_groups: int | None,
    dtype: Any,
    affine: bool = True,
    scale: jax.Array | None = None,
    shift: jax.Array | None = None,
    activation: Activation = None,
) -> jax.Array:
    """A UViT norm named `name` inside the calling module: `Norm` (fused), or the flax
    composition it replaces: nn.GroupNorm / nn.LayerNorm, then x * (1 + scale) + shift and the
    activation in `dtype`. scale, shift: (batch, channels), both or neither. Same parameters
    either way."""
    if fused:
        return Norm(num_groups, affine, activation, dtype, name=name)(x, scale, shift)
    if num_groups is None:
        h = nn.LayerNorm(use_scale=affine, use_bias=affine, dtype=dtype, name=name)(x)
    else:
        h = nn.GroupNorm(num_groups, use_scale=affine, use_bias=affine, dtype=dtype, name=name)(x)
    if scale is not None:
        broadcast = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        h = h * (1 + scale.reshape(broadcast)) + shift.reshape(broadcast)
    return h if activation is None else activation(h)
