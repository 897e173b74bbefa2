"""Variance-preserving noise schedules parametrised by log-SNR (docs/method.md §1).

t = 0 is clean data (λ = λ_max), t = 1 is pure noise (λ = λ_min). α² = sigmoid(λ), σ² = sigmoid(−λ).
All arithmetic is float32 whatever the network's compute dtype, because the consistency target
divides by small differences of α and σ.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A log-SNR schedule λ(t) on t ∈ [0, 1]; `name` and `params` say how it was built."""

    name: str
    params: tuple[tuple[str, float], ...]
    _logsnr_fn: Callable[[Array], Array] = dataclasses.field(repr=False, compare=False)

    def logsnr(self, t: Array) -> Array:
        """λ(t) as float32, elementwise."""
        return self._logsnr_fn(jnp.asarray(t, jnp.float32))

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        """(α_t, σ_t) as float32, elementwise; α² + σ² = 1."""
        logsnr = self.logsnr(t)
        return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def _cosine_logsnr(t: Array, logsnr_min: float, logsnr_max: float) -> Array:
    """−2 log tan(a t + b), with a, b chosen so that λ(0) = λ_max and λ(1) = λ_min."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2.0 * jnp.log(jnp.tan(a * t + b))


def _resolution_shift(image_resolution: int, noise_resolution: int) -> float:
    """2 log(r_n / r): the log-SNR shift that keeps a large image as noisy as a small one."""
    return 2.0 * math.log(noise_resolution / image_resolution)


def _check_logsnr_range(logsnr_min: float, logsnr_max: float) -> None:
    if not logsnr_min < logsnr_max:
        raise ValueError(
            f"logsnr_min must be below logsnr_max, got logsnr_min={logsnr_min}, "
            f"logsnr_max={logsnr_max}"
        )


def _check_resolution(name: str, value: int) -> None:
    if not (isinstance(value, int) and value > 0):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def cosine(logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Schedule:
    """The cosine schedule, λ(t) = −2 log tan(πt/2), clipped to [λ_min, λ_max]."""
    _check_logsnr_range(logsnr_min, logsnr_max)
    return Schedule(
        name="cosine",
        params=(("logsnr_min", logsnr_min), ("logsnr_max", logsnr_max)),
        _logsnr_fn=lambda t: _cosine_logsnr(t, logsnr_min, logsnr_max),
    )


def shifted_cosine(
    image_resolution: int,
    noise_resolution: int,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> Schedule:
    """Cosine shifted by 2 log(r_n / r) (simple diffusion): the endpoints move with the shift."""
    _check_logsnr_range(logsnr_min, logsnr_max)
    _check_resolution("image_resolution", image_resolution)
    _check_resolution("noise_resolution", noise_resolution)
    shift = _resolution_shift(image_resolution, noise_resolution)
    return Schedule(
        name="shifted_cosine",
        params=(
            ("image_resolution", image_resolution),
            ("noise_resolution", noise_resolution),
            ("logsnr_min", logsnr_min),
            ("logsnr_max", logsnr_max),
        ),
        _logsnr_fn=lambda t: _cosine_logsnr(t, logsnr_min, logsnr_max) + shift,
    )


def interpolated_cosine(
    image_resolution: int,
    noise_resolution_low: int,
    noise_resolution_high: int,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> Schedule:
    """Simple diffusion's interpolated schedule: λ(t) = t·λ_shift(t; r_lo) + (1 − t)·λ_shift(t; r_hi).

    Near the data (t = 0) it is the cosine shifted to the high noise resolution (usually the image
    resolution: no shift), near pure noise (t = 1) the cosine shifted to the low one, as in
    Hoogeboom et al. (2023) and the MCM paper (32 → 64 for ImageNet64, 32 → 128 for ImageNet128).
    """
    _check_logsnr_range(logsnr_min, logsnr_max)
    _check_resolution("image_resolution", image_resolution)
    _check_resolution("noise_resolution_low", noise_resolution_low)
    _check_resolution("noise_resolution_high", noise_resolution_high)
    shift_low = _resolution_shift(image_resolution, noise_resolution_low)
    shift_high = _resolution_shift(image_resolution, noise_resolution_high)

    def logsnr_fn(t: Array) -> Array:
        base = _cosine_logsnr(t, logsnr_min, logsnr_max)
        return t * (base + shift_low) + (1.0 - t) * (base + shift_high)

    return Schedule(
        name="interpolated_cosine",
        params=(
            ("image_resolution", image_resolution),
            ("noise_resolution_low", noise_resolution_low),
            ("noise_resolution_high", noise_resolution_high),
            ("logsnr_min", logsnr_min),
            ("logsnr_max", logsnr_max),
        ),
        _logsnr_fn=logsnr_fn,
    )


_SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "cosine": cosine,
    "shifted_cosine": shifted_cosine,
    "interpolated_cosine": interpolated_cosine,
}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Builds a schedule by name; see `cosine`, `shifted_cosine`, `interpolated_cosine`."""
    if name not in _SCHEDULES:
        raise ValueError(f"schedule name must be one of {sorted(_SCHEDULES)}, got {name!r}")
    try:
        return _SCHEDULES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for schedule {name!r}: {e}") from None
