"""Samplers with the exact denoiser of a two-Gaussian mixture (the paper's Figure 1 setting)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mcm_jax import samplers
from mcm_jax.mixture import GaussianMixture
from mcm_jax.schedules import get_schedule

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
