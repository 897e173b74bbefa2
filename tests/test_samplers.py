"""Samplers with the exact denoiser of a two-Gaussian mixture (the paper's Figure 1 setting)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mcm_jax.experiments.mixture import GaussianMixture
from mcm_jax.method import diffusion, samplers
from mcm_jax.method.schedules import get_schedule

SCHEDULE = get_schedule("cosine")
MIXTURE = GaussianMixture()
N = 20000


def _mode_stats(x):
    x = np.asarray(x)[:, 0]
    left = x[x < 0]
    right = x[x >= 0]
    return left.size / x.size, left.mean(), right.mean(), left.std(), right.std()


def _sample(steps, method, **kwargs):
    z_1 = jax.random.normal(jax.random.PRNGKey(0), (N, 1))
    fn = jax.jit(
        lambda z: samplers.sample(
            MIXTURE.denoise_at(SCHEDULE), z, schedule=SCHEDULE, steps=steps, method=method, **kwargs
        )
    )
    return fn(z_1)


def _wasserstein(x):
    reference = np.asarray(MIXTURE.sample(jax.random.PRNGKey(9), N))[:, 0]
    return scipy.stats.wasserstein_distance(np.asarray(x)[:, 0], reference)


def test_many_ddim_steps_reproduce_the_mixture():
    x = _sample(256, "ddim")
    weight, mean_l, mean_r, std_l, std_r = _mode_stats(x)
    se_weight = np.sqrt(0.35 * 0.65 / N)
    assert abs(weight - MIXTURE.weights[0]) < 4 * se_weight
    assert abs(mean_l - MIXTURE.means[0]) < 0.01 and abs(mean_r - MIXTURE.means[1]) < 0.01
    assert abs(std_l / MIXTURE.stds[0] - 1) < 0.03 and abs(std_r / MIXTURE.stds[1] - 1) < 0.03
    assert _wasserstein(x) < 0.01  # measured 0.0056 (the two-sample noise floor is about 0.005)


def test_few_ddim_steps_do_not():
    x_one = np.asarray(_sample(1, "ddim"))
    # One step returns E[x | z_1] ≈ E[x]: a point mass at the mixture mean, not two modes.
    mixture_mean = sum(w * m for w, m in zip(MIXTURE.weights, MIXTURE.means))
    np.testing.assert_allclose(x_one, mixture_mean, atol=0.01)
    # Two steps put mass between the modes and get the mode weights wrong; W1 falls with steps.
    x_two = _sample(2, "ddim")
    assert abs(_mode_stats(x_two)[0] - MIXTURE.weights[0]) > 0.05
    distances = [_wasserstein(_sample(steps, "ddim")) for steps in (2, 4, 16)]
    assert distances[0] > distances[1] > distances[2] and distances[1] > 0.1  # measured 0.41, 0.12, 0.03


def test_table_x_var_fn_interpolates():
    fn = samplers.table_x_var_fn(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.1, 0.3]))
    np.testing.assert_allclose(fn(jnp.array([0.25, 0.75]), None, None), [0.05, 0.2], rtol=1e-6)


def test_classifier_free_guidance_extrapolates():
    model_fn = lambda z, t, label: z + label[:, None].astype(jnp.float32)
    label = jnp.array([2, 3])
    guided = samplers.classifier_free_guidance(model_fn, label, null_label=0, weight=1.5)
    np.testing.assert_allclose(guided(jnp.zeros((2, 1)), jnp.ones(2)), [[5.0], [7.5]])


def test_bad_sampler_arguments():
    denoise = MIXTURE.denoise_at(SCHEDULE)
    z = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        samplers.sample(denoise, z, schedule=SCHEDULE, steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        samplers.sample(denoise, z, schedule=SCHEDULE, steps=2, method="euler")
    with pytest.raises(ValueError, match="calibration x_vars must be non-negative"):
        samplers.table_x_var_fn(np.array([0.0, 1.0]), np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        samplers.table_x_var_fn(np.array([1.0, 0.0]), np.array([0.1, 0.1]))


def test_one_addim_step_is_ddim_plus_the_predicted_norm():
    """Algorithm 3 takes the aDDIM step to s = 0 too: 1-step aDDIM is not x̂ but
    z_0 = α_0 x̂ + sqrt(σ_0² + d·z_var/‖ε̂‖²)·ε̂, z_var = (α_0 − α_1σ_0/σ_1)²·0.1/(2 + α_1²/σ_1²)."""
    d = 3
    z_1 = jax.random.normal(jax.random.PRNGKey(1), (16, d))
    denoise = MIXTURE.denoise_at(SCHEDULE)
    run = lambda method: np.asarray(
        samplers.sample(denoise, z_1, schedule=SCHEDULE, steps=1, method=method), np.float64
    )
    x_hat = run("ddim")
    np.testing.assert_array_equal(x_hat, denoise(z_1, jnp.ones(16)))
    (alpha_0, sigma_0), (alpha_1, sigma_1) = (
        (float(a), float(s)) for a, s in (SCHEDULE.alpha_sigma(0.0), SCHEDULE.alpha_sigma(1.0))
    )
    eps_hat = (np.asarray(z_1, np.float64) - alpha_1 * x_hat) / sigma_1
    x_var = 0.1 / (2 + alpha_1**2 / sigma_1**2)
    z_var = (alpha_0 - alpha_1 * sigma_0 / sigma_1) ** 2 * x_var
    scale = np.sqrt(sigma_0**2 + d * z_var / np.sum(eps_hat**2, axis=1))
    correction = run("addim") - alpha_0 * x_hat
    np.testing.assert_allclose(correction, scale[:, None] * eps_hat, rtol=1e-5, atol=1e-6)
    # Not a rounding effect: the added norm is about sqrt(d·0.05) per example.
    assert np.all(np.linalg.norm(correction, axis=1) > 0.2)


def test_addim_last_step_restores_the_norm_with_an_exact_denoiser():
    """Paper eq. 12–14 on the last step (here the only one, t = 1 → s = 0): with x̂ = E[x|z_t] and
    x_var = tr Var[x|z_t]/d, ‖z_0‖² is ‖z_0^DDIM‖² + tr Var[z_0|z_t] on average over examples
    (per example up to the cross term 2α_0(c − σ_0)x̂·ε̂ that eq. 14 neglects); DDIM falls short
    by it."""
    d, n = 256, 512
    z_1 = jax.random.normal(jax.random.PRNGKey(2), (n, d))
    denoise = MIXTURE.denoise_at(SCHEDULE)
    exact_x_var = lambda t, z, x_hat: MIXTURE.posterior_var(z, *SCHEDULE.alpha_sigma(t))
    z_0 = samplers.sample(
        denoise, z_1, schedule=SCHEDULE, steps=1, method="addim", x_var_fn=exact_x_var
    )
    ones, zeros = jnp.ones(n), jnp.zeros(n)
    (alpha_1, sigma_1), (alpha_0, sigma_0) = SCHEDULE.alpha_sigma(ones), SCHEDULE.alpha_sigma(zeros)
    z_ddim = diffusion.ddim_step(denoise(z_1, ones), z_1, alpha_1, sigma_1, alpha_0, sigma_0)
    trace_var = (alpha_0 - alpha_1 * sigma_0 / sigma_1) ** 2 * d * exact_x_var(ones, z_1, None)
    sq_norm = lambda z: np.sum(np.asarray(z, np.float64) ** 2, axis=1)
    expected = sq_norm(z_ddim) + np.asarray(trace_var)
    np.testing.assert_allclose(np.mean(sq_norm(z_0)), np.mean(expected), rtol=0.01)
    # From pure noise the last step must give the data's second moment Σ w (μ² + s²) = 1.04.
    second_moment = sum(
        w * (m**2 + s**2) for w, m, s in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.stds)
    )
    np.testing.assert_allclose(np.mean(sq_norm(z_0)) / d, second_moment, rtol=0.01)
    assert np.mean(sq_norm(z_ddim)) / d < 0.1  # DDIM: ‖E[x]‖²/d = 0.09
