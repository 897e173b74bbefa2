"""A Gaussian mixture with its exact denoiser, posterior variance and probability-flow map.

The paper's Figure 1 illustrates MCMs on a two-Gaussian mixture. Its exact denoiser makes the
method testable without a network: DDIM with it is an exact probability-flow solver in the limit of
many steps, and the exact segment jump is the map a perfect multistep consistency model learns.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mcm_jax.method import diffusion
from mcm_jax.method.schedules import Schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, s_k²) on the real line, independently in every coordinate.

    Examples have shape (dim,). With dim = 1 it is the paper's 1-D picture; with many coordinates
    the high-dimensional norm argument behind aDDIM applies as it does to images.
    """

    weights: tuple[float, ...] = (0.35, 0.65)
    means: tuple[float, ...] = (-1.0, 1.0)
    stds: tuple[float, ...] = (0.2, 0.2)

    def __post_init__(self):
        if not len(self.weights) == len(self.means) == len(self.stds) >= 1:
            raise ValueError("weights, means and stds must have the same length >= 1")
        if abs(sum(self.weights) - 1.0) > 1e-6 or min(self.weights) <= 0:
            raise ValueError(f"weights must be positive and sum to 1, got {self.weights}")
        if min(self.stds) <= 0:
            raise ValueError(f"stds must be positive, got {self.stds}")

    def sample(self, rng: Array, n: int, dim: int = 1) -> Array:
        """n exact samples, shape (n, dim)."""
        rng_k, rng_x = jax.random.split(rng)
        k = jax.random.choice(rng_k, len(self.weights), (n, dim), p=jnp.asarray(self.weights))
        noise = jax.random.normal(rng_x, (n, dim))
        return jnp.asarray(self.means)[k] + jnp.asarray(self.stds)[k] * noise

    def _posterior(self, z: Array, alpha: Array, sigma: Array):
        """Per-component responsibilities, means and variances of p(x | z_t), each z.shape + (K,)."""
        alpha = diffusion.expand_to(alpha, z)[..., None]
        sigma = diffusion.expand_to(sigma, z)[..., None]
        z = z[..., None]
        w, mu, s2 = (jnp.asarray(a, jnp.float32) for a in (self.weights, self.means, self.stds))
        s2 = s2**2
        marginal_var = alpha**2 * s2 + sigma**2
        log_r = jnp.log(w) - 0.5 * jnp.log(marginal_var) - 0.5 * (z - alpha * mu) ** 2 / marginal_var
        resp = jax.nn.softmax(log_r, axis=-1)
        gain = alpha * s2 / marginal_var
        comp_mean = mu + gain * (z - alpha * mu)
        comp_var = s2 * sigma**2 / marginal_var
        return resp, comp_mean, comp_var

    def denoise(self, z: Array, alpha: Array, sigma: Array) -> Array:
        """E[x | z_t], the shape of z."""
        resp, comp_mean, _ = self._posterior(z, alpha, sigma)
        return jnp.sum(resp * comp_mean, axis=-1)

    def posterior_var(self, z: Array, alpha: Array, sigma: Array) -> Array:
        """tr Var[x | z_t] / d per example, shape (batch,)."""
        resp, comp_mean, comp_var = self._posterior(z, alpha, sigma)
        mean = jnp.sum(resp * comp_mean, axis=-1, keepdims=True)
        var = jnp.sum(resp * (comp_var + (comp_mean - mean) ** 2), axis=-1)
        return diffusion.per_example_mean(var)

    def denoise_at(self, schedule: Schedule):
        """denoise_fn(z, t) -> E[x | z_t] for the samplers."""
        return lambda z, t: self.denoise(z, *schedule.alpha_sigma(t))

    def flow(self, z_t: Array, t: Array, s: Array, schedule: Schedule, substeps: int = 512) -> Array:
        """The probability-flow map z_t ↦ z_s (s < t, per example), by fine DDIM with E[x|z]."""

        def step(i, z):
            t_i = t + (s - t) * (i / substeps)
            t_j = t + (s - t) * ((i + 1) / substeps)
            a_i, s_i = schedule.alpha_sigma(t_i)
            a_j, s_j = schedule.alpha_sigma(t_j)
            return diffusion.ddim_step(self.denoise(z, a_i, s_i), z, a_i, s_i, a_j, s_j)

        return jax.lax.fori_loop(0, substeps, step, z_t)

    def segment_jump(self, z_t: Array, t: Array, t_step: Array, schedule: Schedule, substeps: int = 512) -> Array:
        """The exact multistep consistency map: the x̂ whose DDIM jump t→t_step follows the flow."""
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_step, sigma_step = schedule.alpha_sigma(t_step)
        z_step = self.flow(z_t, t, t_step, schedule, substeps)
        return diffusion.inverse_ddim(z_step, z_t, alpha_t, sigma_t, alpha_step, sigma_step)
