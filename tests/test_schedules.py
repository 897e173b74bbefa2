"""Noise schedules: monotone log-SNR, endpoints, α² + σ² = 1, resolution shifts."""

import math

import numpy as np
import pytest

from mcm_jax.method.schedules import get_schedule

T = np.linspace(0.0, 1.0, 1001, dtype=np.float32)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("cosine", {}),
        ("cosine", {"logsnr_min": -10.0, "logsnr_max": 12.0}),
        ("shifted_cosine", {"image_resolution": 64, "noise_resolution": 32}),
        (
            "interpolated_cosine",
            {"image_resolution": 128, "noise_resolution_low": 32, "noise_resolution_high": 128},
        ),
    ],
)
def test_logsnr_decreasing_and_variance_preserving(name, kwargs):
    schedule = get_schedule(name, **kwargs)
    logsnr = np.asarray(schedule.logsnr(T))
    assert logsnr.dtype == np.float32
    assert np.all(np.diff(logsnr) < 0)
    alpha, sigma = (np.asarray(a) for a in schedule.alpha_sigma(T))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.log(alpha**2 / sigma**2), logsnr, rtol=1e-4, atol=1e-3)


def test_cosine_endpoints_and_midpoint():
    schedule = get_schedule("cosine", logsnr_min=-15.0, logsnr_max=15.0)
    np.testing.assert_allclose(schedule.logsnr(0.0), 15.0, atol=1e-4)
    np.testing.assert_allclose(schedule.logsnr(1.0), -15.0, atol=1e-4)
    np.testing.assert_allclose(schedule.logsnr(0.5), 0.0, atol=1e-5)  # symmetric range
    # Inside the clipping range it is the plain cosine −2 log tan(π t' / 2) of a remapped t'.
    unclipped = get_schedule("cosine", logsnr_min=-60.0, logsnr_max=60.0)
    np.testing.assert_allclose(
        unclipped.logsnr(0.3), -2 * math.log(math.tan(math.pi * 0.3 / 2)), rtol=1e-4
    )


def test_shifted_is_cosine_plus_resolution_shift():
    base = get_schedule("cosine")
    shifted = get_schedule("shifted_cosine", image_resolution=64, noise_resolution=32)
    np.testing.assert_allclose(
        shifted.logsnr(T), base.logsnr(T) + 2 * math.log(32 / 64), rtol=1e-6, atol=1e-5
    )


def test_interpolated_endpoints_and_blend():
    lo = get_schedule("shifted_cosine", image_resolution=64, noise_resolution=32)
    hi = get_schedule("shifted_cosine", image_resolution=64, noise_resolution=64)
    interp = get_schedule(
        "interpolated_cosine", image_resolution=64, noise_resolution_low=32, noise_resolution_high=64
    )
    # Near the data the high (unshifted) schedule, near pure noise the low-resolution shift.
    np.testing.assert_allclose(interp.logsnr(0.0), 15.0, atol=1e-4)
    np.testing.assert_allclose(interp.logsnr(1.0), -15.0 + 2 * math.log(0.5), atol=1e-4)
    expected = T * np.asarray(lo.logsnr(T)) + (1 - T) * np.asarray(hi.logsnr(T))
    np.testing.assert_allclose(interp.logsnr(T), expected, rtol=1e-5, atol=1e-4)


def test_bad_schedule_arguments_name_the_field():
    with pytest.raises(ValueError, match="schedule name must be one of"):
        get_schedule("linear")
    with pytest.raises(ValueError, match="logsnr_min must be below logsnr_max"):
        get_schedule("cosine", logsnr_min=5.0, logsnr_max=-5.0)
    with pytest.raises(ValueError, match="noise_resolution must be a positive integer"):
        get_schedule("shifted_cosine", image_resolution=64, noise_resolution=0)
    with pytest.raises(ValueError, match="bad arguments for schedule 'cosine'"):
        get_schedule("cosine", image_resolution=64)
