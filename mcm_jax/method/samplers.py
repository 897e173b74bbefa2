"""Deterministic samplers (docs/method.md §6): DDIM and aDDIM for teachers, S-step DDIM students.

A sampler is a pure function of (denoise_fn, z_1, schedule, steps); `denoise_fn(z, t) -> x̂` with t
of shape (batch,). The step count is static, so the loop is one `lax.fori_loop` inside jit.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mcm_jax.method import conditioning, diffusion
from mcm_jax.method.schedules import Schedule

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
XVarFn = Callable[[Array, Array, Array], Array]

METHODS = ("ddim", "addim")


def analytic_x_var_fn(schedule: Schedule) -> XVarFn:
    """x_var(t) = 0.1/(2 + α_t²/σ_t²), the paper's data-free estimate (docs/method.md §3 (a))."""

    def x_var_fn(t, z_t, x_hat):
        del z_t, x_hat
        return diffusion.analytic_x_var(*schedule.alpha_sigma(t))

    return x_var_fn


def table_x_var_fn(times: np.ndarray, x_vars: np.ndarray) -> XVarFn:
    """x_var(t) interpolated linearly in a measured calibration table (docs/method.md §3 (b)).

    `times` ascending in [0, 1], `x_vars` the calibrated η·‖x − x̂(z_t)‖²/d at those times.
    """
    times = np.asarray(times, np.float32)
    x_vars = np.asarray(x_vars, np.float32)
    if times.ndim != 1 or times.shape != x_vars.shape or times.size < 2:
        raise ValueError(
            f"calibration times and x_vars must be 1-D of equal length >= 2, got shapes "
            f"{times.shape} and {x_vars.shape}"
        )
    if np.any(np.diff(times) <= 0):
        raise ValueError("calibration times must be strictly increasing")
    diffusion.check_nonnegative("calibration x_vars", x_vars)

    def x_var_fn(t, z_t, x_hat):
        del z_t, x_hat
        return jnp.interp(t, times, x_vars)

    return x_var_fn


def classifier_free_guidance(
    model_fn: Callable[[Array, Array, conditioning.Condition], Array],
    cond: conditioning.Condition,
    null_label: int,
    weight: float,
) -> DenoiseFn:
    """denoise_fn with guidance: x̂ = (1 + w)·x̂(z, t, cond) − w·x̂(z, t, null), one double batch;
    the null condition is the null label and, for text, the empty prompt."""
    if weight < 0:
        raise ValueError(f"guidance weight must be >= 0, got {weight}")
    if weight == 0:
        return lambda z, t: model_fn(z, t, cond)

    def denoise_fn(z, t):
        both = model_fn(
            jnp.concatenate([z, z]),
            jnp.concatenate([t, t]),
            conditioning.with_null(cond, null_label),
        )
        x_cond, x_uncond = jnp.split(both, 2)
        return x_cond + weight * (x_cond - x_uncond)

    return denoise_fn


def sample(
    denoise_fn: DenoiseFn,
    z_1: Array,
    *,
    schedule: Schedule,
    steps: int,
    method: str = "ddim",
    x_var_fn: XVarFn | None = None,
) -> Array:
    """Runs `steps` uniform steps from t = 1 down to t = 0 and returns the sample.

    method "ddim": z_s = DDIM_{t→s}(x̂, z_t), and the last step returns x̂ = f(z_{1/N}, 1/N) (the
    DDIM step to s = 0 is x̂ up to σ_0); with steps = S this is the MCM student sampler (paper's
    Algorithm 2). method "addim" (paper's Algorithm 3): z_s = aDDIM_{t→s}(x̂, z_t, x_var_fn(t, z_t,
    x̂)) on every step, the last one to s = 0 included, and returns z_0, i.e. x̂ plus the norm
    correction; the analytic x_var when x_var_fn is None.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ddim" and x_var_fn is not None:
        raise ValueError("x_var_fn is only used by method='addim'")
    if method == "addim" and x_var_fn is None:
        x_var_fn = analytic_x_var_fn(schedule)

    z_1 = jnp.asarray(z_1, jnp.float32)
    batch = z_1.shape[0]

    def step(i, z_t):
        t = jnp.full((batch,), 1.0 - i / steps, jnp.float32)
        s = jnp.full((batch,), 1.0 - (i + 1) / steps, jnp.float32)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        x_hat = denoise_fn(z_t, t)
        if method == "ddim":
            return diffusion.ddim_step(x_hat, z_t, alpha_t, sigma_t, alpha_s, sigma_s)
        x_var = jnp.broadcast_to(x_var_fn(t, z_t, x_hat), (batch,))
        return diffusion.addim_step(x_hat, z_t, alpha_t, sigma_t, alpha_s, sigma_s, x_var)

    if method == "addim":
        return jax.lax.fori_loop(0, steps, step, z_1)
    z_last = jax.lax.fori_loop(0, steps - 1, step, z_1)
    return denoise_fn(z_last, jnp.full((batch,), 1.0 / steps, jnp.float32))
