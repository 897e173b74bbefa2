"""Deterministic diffusion steps: DDIM, inverse DDIM and adjusted DDIM (docs/method.md §2–3).

Conventions: the batch is the leading axis of x and z; α and σ are scalars or per-example arrays of
shape (batch,) and broadcast against x; x_var is per example. Everything runs in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def expand_to(a: Array, x: Array) -> Array:
    """Reshapes a scalar or per-example (batch,) array so it broadcasts against x, in float32 or
    wider (float64 stays float64 where enabled, for exact checks of the formulas)."""
    a = jnp.asarray(a)
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    if a.ndim == 0:
        return a
    if a.ndim != 1 or a.shape[0] != x.shape[0]:
        raise ValueError(
            f"per-example coefficients must be scalars or of shape ({x.shape[0]},) to match the "
            f"batch of x with shape {x.shape}, got shape {a.shape}"
        )
    return a.reshape(a.shape + (1,) * (x.ndim - 1))


def _check_same_shape(**arrays: Array) -> None:
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"arrays must have the same shape, got {shapes}")


def check_nonnegative(name: str, value: Array) -> None:
    """Rejects negative concrete values; traced values (inside jit) cannot be inspected."""
    if not isinstance(value, jax.core.Tracer) and np.any(np.asarray(value) < 0):
        raise ValueError(f"{name} must be non-negative, got min {np.min(np.asarray(value))}")


def example_size(x: Array) -> int:
    """d, the number of dimensions of one example."""
    return int(np.prod(x.shape[1:]))


def per_example_mean(x: Array) -> Array:
    """Mean over all but the leading (batch) axis."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def x_from_v(v: Array, z: Array, alpha: Array, sigma: Array) -> Array:
    """x̂ = α z − σ v̂ for v = α ε − σ x."""
    return expand_to(alpha, z) * z - expand_to(sigma, z) * v


def v_from_x(x: Array, z: Array, alpha: Array, sigma: Array) -> Array:
    """v = (α z − x) / σ, the inverse of `x_from_v`."""
    return (expand_to(alpha, z) * z - x) / expand_to(sigma, z)


def eps_from_x(x: Array, z: Array, alpha: Array, sigma: Array) -> Array:
    """ε̂ = (z − α x̂) / σ."""
    return (z - expand_to(alpha, z) * x) / expand_to(sigma, z)


def ddim_step(
    x_hat: Array, z_t: Array, alpha_t: Array, sigma_t: Array, alpha_s: Array, sigma_s: Array
) -> Array:
    """DDIM_{t→s}(x̂, z_t) = α_s x̂ + (σ_s/σ_t)(z_t − α_t x̂)."""
    _check_same_shape(x_hat=x_hat, z_t=z_t)
    a_t, s_t, a_s, s_s = (expand_to(c, z_t) for c in (alpha_t, sigma_t, alpha_s, sigma_s))
    return a_s * x_hat + (s_s / s_t) * (z_t - a_t * x_hat)


def inverse_ddim(
    z_s: Array, z_t: Array, alpha_t: Array, sigma_t: Array, alpha_s: Array, sigma_s: Array
) -> Array:
    """invDDIM_{t→s}(z_s, z_t): the x for which DDIM_{t→s}(x, z_t) = z_s.

    (z_s − (σ_s/σ_t) z_t) / (α_s − α_t σ_s/σ_t). The denominator shrinks as s → t, so this is only
    well conditioned in float32 or wider.
    """
    _check_same_shape(z_s=z_s, z_t=z_t)
    a_t, s_t, a_s, s_s = (expand_to(c, z_t) for c in (alpha_t, sigma_t, alpha_s, sigma_s))
    ratio = s_s / s_t
    return (z_s - ratio * z_t) / (a_s - a_t * ratio)


def addim_step(
    x_hat: Array,
    z_t: Array,
    alpha_t: Array,
    sigma_t: Array,
    alpha_s: Array,
    sigma_s: Array,
    x_var: Array,
) -> Array:
    """Adjusted DDIM: a DDIM step whose noise part is enlarged to keep E‖z_s‖² right.

    z_s = α_s x̂ + sqrt(σ_s² + d·z_var/‖ε̂‖²)·ε̂ with z_var = (α_s − α_t σ_s/σ_t)²·x_var, where
    x_var is the per-dimension posterior variance tr Var[x|z_t]/d of each example. DDIM replaces
    x by its mean x̂ and so loses tr Var[z_s|z_t] = d·z_var of the norm; aDDIM puts it back along ε̂.
    """
    _check_same_shape(x_hat=x_hat, z_t=z_t)
    check_nonnegative("x_var", x_var)
    a_t, s_t, a_s, s_s = (expand_to(c, z_t) for c in (alpha_t, sigma_t, alpha_s, sigma_s))
    eps_hat = (z_t - a_t * x_hat) / s_t
    z_var = (a_s - a_t * s_s / s_t) ** 2 * expand_to(x_var, z_t)
    eps_sq_norm = jnp.sum(eps_hat**2, axis=tuple(range(1, z_t.ndim)), keepdims=True)
    # ε̂ = 0 (z_t exactly on α_t x̂, seen in 1-D near t = 0) leaves no direction to add norm along.
    has_direction = eps_sq_norm > 0
    extra = jnp.where(
        has_direction, example_size(z_t) * z_var / jnp.where(has_direction, eps_sq_norm, 1.0), 0.0
    )
    return a_s * x_hat + jnp.sqrt(s_s**2 + extra) * eps_hat


def analytic_x_var(alpha: Array, sigma: Array) -> Array:
    """The paper's data-free estimate of the per-dimension posterior variance: 0.1/(2 + α²/σ²)."""
    alpha = jnp.asarray(alpha, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    return 0.1 / (2.0 + alpha**2 / sigma**2)


def distillation_x_var(x_teacher: Array, x: Array, xvar_frac: float) -> Array:
    """Per-example x_var for distillation: xvar_frac·‖x_teacher − x‖²/d (docs/method.md §3 (c))."""
    _check_same_shape(x_teacher=x_teacher, x=x)
    return xvar_frac * per_example_mean((x_teacher - x) ** 2)
