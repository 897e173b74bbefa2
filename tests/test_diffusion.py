"""DDIM, inverse DDIM and aDDIM: identities, limits, and the paper's norm argument (its eq. 12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.method import diffusion
from mcm_jax.method.schedules import get_schedule

SCHEDULE = get_schedule("cosine")


def _coeffs(t, s):
    alpha_t, sigma_t = SCHEDULE.alpha_sigma(t)
    alpha_s, sigma_s = SCHEDULE.alpha_sigma(s)
    return alpha_t, sigma_t, alpha_s, sigma_s


def test_inverse_ddim_inverts_ddim_per_example():
    rng = jax.random.PRNGKey(0)
    x, z_t = jax.random.normal(rng, (2, 16, 4, 4, 3))
    t = jax.random.uniform(jax.random.PRNGKey(1), (16,), minval=0.1, maxval=1.0)
    s = t - jax.random.uniform(jax.random.PRNGKey(2), (16,), minval=0.02, maxval=0.1)
    coeffs = _coeffs(t, s)
    z_s = diffusion.ddim_step(x, z_t, *coeffs)
    np.testing.assert_allclose(diffusion.inverse_ddim(z_s, z_t, *coeffs), x, rtol=2e-4, atol=2e-4)


def test_ddim_with_true_x_and_eps_is_the_forward_process():
    x, eps = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 5))
    t, s = jnp.full((8,), 0.7), jnp.full((8,), 0.3)
    alpha_t, sigma_t, alpha_s, sigma_s = _coeffs(t, s)
    z_t = alpha_t[:, None] * x + sigma_t[:, None] * eps
    z_s = diffusion.ddim_step(x, z_t, alpha_t, sigma_t, alpha_s, sigma_s)
    np.testing.assert_allclose(z_s, alpha_s[:, None] * x + sigma_s[:, None] * eps, atol=1e-5)


def test_addim_equals_ddim_without_variance_and_tends_to_it_as_s_approaches_t():
    x_hat, z_t = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 32))
    t = jnp.full((4,), 0.6)
    coeffs = _coeffs(t, t - 0.1)
    np.testing.assert_allclose(
        diffusion.addim_step(x_hat, z_t, *coeffs, jnp.zeros(4)),
        diffusion.ddim_step(x_hat, z_t, *coeffs),
        rtol=1e-6,
        atol=1e-6,
    )
    gaps = []
    for dt in (0.1, 0.01, 0.001):
        coeffs = _coeffs(t, t - dt)
        addim = diffusion.addim_step(x_hat, z_t, *coeffs, jnp.full((4,), 0.5))
        gaps.append(float(jnp.max(jnp.abs(addim - diffusion.ddim_step(x_hat, z_t, *coeffs)))))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-5 < gaps[0]  # the extra variance shrinks like (s − t)²


def test_addim_restores_the_norm_that_ddim_loses():
    """Paper eq. 12 on Gaussian data with its exact denoiser and posterior variance.

    Data x = U w lives on an m-dimensional subspace of R^d (w ~ N(0, c² I)), like images on a
    manifold, so x̂ and ε̂ are nearly orthogonal. For z_t from the exact marginal, the exact process
    has E‖z_s‖² = α_s² m c² + σ_s² d. DDIM falls short by tr Var[z_s|z_t] = (α_s − α_t σ_s/σ_t)²·
    tr Var[x|z_t]; aDDIM with the exact x_var matches (Monte Carlo tolerance, paired samples).
    """
    d, m, c, n = 256, 4, 3.0, 20000
    t, s = 0.55, 0.35
    alpha_t, sigma_t, alpha_s, sigma_s = (float(a) for a in _coeffs(t, s))
    basis = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (d, m)))[0]  # (d, m)
    w = c * jax.random.normal(jax.random.PRNGKey(1), (n, m))
    x = w @ basis.T
    eps = jax.random.normal(jax.random.PRNGKey(2), (n, d))
    z_t = alpha_t * x + sigma_t * eps

    # Exact posterior of x given z_t: inside the subspace a Gaussian, zero outside.
    gain = alpha_t * c**2 / (alpha_t**2 * c**2 + sigma_t**2)
    x_hat = (z_t @ basis) @ basis.T * gain
    post_var_per_dim = m * c**2 * sigma_t**2 / (alpha_t**2 * c**2 + sigma_t**2) / d
    x_var = jnp.full((n,), post_var_per_dim)

    z_exact = alpha_s * x + sigma_s * jax.random.normal(jax.random.PRNGKey(3), (n, d))
    z_ddim = diffusion.ddim_step(x_hat, z_t, alpha_t, sigma_t, alpha_s, sigma_s)
    z_addim = diffusion.addim_step(x_hat, z_t, alpha_t, sigma_t, alpha_s, sigma_s, x_var)
    # The exact process coupled to z_t: the DDIM map applied to the true x (same marginal as z_s).
    z_coupled = diffusion.ddim_step(x, z_t, alpha_t, sigma_t, alpha_s, sigma_s)

    sq = lambda z: np.asarray(jnp.sum(z**2, axis=1), np.float64)
    expected = alpha_s**2 * m * c**2 + sigma_s**2 * d
    shortfall = (alpha_s - alpha_t * sigma_s / sigma_t) ** 2 * post_var_per_dim * d
    se = lambda v: np.std(v) / np.sqrt(n)

    assert abs(sq(z_exact).mean() - expected) < 4 * se(sq(z_exact))
    assert abs(sq(z_coupled).mean() - expected) < 4 * se(sq(z_coupled))
    ddim_gap = sq(z_coupled) - sq(z_ddim)
    addim_gap = sq(z_coupled) - sq(z_addim)
    assert abs(ddim_gap.mean() - shortfall) < 4 * se(ddim_gap)
    assert ddim_gap.mean() > 10 * se(ddim_gap)  # DDIM's loss of norm is real...
    assert abs(addim_gap.mean()) < 4 * se(addim_gap)  # ...and aDDIM restores it.
    assert abs(addim_gap.mean()) < 0.05 * shortfall


def test_addim_is_finite_when_eps_hat_vanishes():
    t, s = jnp.array([1 / 1280]), jnp.array([0.0])
    coeffs = _coeffs(t, s)
    alpha_t, sigma_t = coeffs[:2]
    x = jnp.array([[0.9]])
    z_t = alpha_t[:, None] * x  # ε̂ = 0 exactly
    for x_var in (0.0, 0.5):
        z_s = diffusion.addim_step(x, z_t, *coeffs, jnp.array([x_var]))
        np.testing.assert_allclose(z_s, diffusion.ddim_step(x, z_t, *coeffs), rtol=1e-6)


def test_analytic_and_distillation_x_var():
    alpha, sigma = SCHEDULE.alpha_sigma(jnp.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(
        diffusion.analytic_x_var(alpha, sigma), 0.1 / (2 + alpha**2 / sigma**2), rtol=1e-6
    )
    np.testing.assert_allclose(diffusion.analytic_x_var(*SCHEDULE.alpha_sigma(1.0)), 0.05, rtol=1e-4)
    x_teacher = jnp.ones((2, 3, 3, 1))
    x = jnp.zeros((2, 3, 3, 1)).at[1].set(1.0)
    np.testing.assert_allclose(diffusion.distillation_x_var(x_teacher, x, 0.75), [0.75, 0.0])


def test_v_and_x_conversions_round_trip():
    v, z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
    alpha, sigma = SCHEDULE.alpha_sigma(jnp.array([0.2, 0.5, 0.9]))
    x = diffusion.x_from_v(v, z, alpha, sigma)
    np.testing.assert_allclose(diffusion.v_from_x(x, z, alpha, sigma), v, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_argument():
    z = jnp.zeros((4, 8))
    coeffs = _coeffs(jnp.full((4,), 0.5), jnp.full((4,), 0.4))
    with pytest.raises(ValueError, match="x_var must be non-negative"):
        diffusion.addim_step(z, z, *coeffs, jnp.array([0.1, -0.1, 0.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        diffusion.ddim_step(jnp.zeros((4, 7)), z, *coeffs)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        diffusion.ddim_step(z, z, jnp.ones(3), *coeffs[1:])
