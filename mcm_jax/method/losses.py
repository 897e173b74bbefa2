"""Training objectives: the diffusion v-loss, the multistep consistency loss and progressive
distillation (docs/method.md).

Losses are pure functions of parameters and a batch. The network enters as a `ModelFn`
(params, z, t, cond, train, dropout_rng) -> x̂ (cond: a `conditioning.Condition`, the label and,
for text models, the prompt), so the trainer can jit them with any sharding and
pass teacher parameters as arguments; `make_model_fn` builds one from a Flax apply function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcm_jax.method import conditioning, diffusion
from mcm_jax.method.schedules import Schedule

Array = jax.Array
Params = Any
ModelFn = Callable[[Params, Array, Array, Array, bool, Optional[Array]], Array]

METHODS = ("ct", "cd")  # the multistep consistency methods
# What `mcm.method` takes: CT, CD, or progressive distillation (Salimans & Ho 2022), the baseline.
STUDENT_METHODS = METHODS + ("pd",)
WEIGHTINGS = ("v", "x", "snr_plus_one", "truncated_snr")
DISTANCES = ("mse", "pseudo_huber")


def make_model_fn(apply_fn: Callable[..., Array], schedule: Schedule) -> ModelFn:
    """Wraps a v-predicting network `apply_fn(variables, z, logsnr, label, train=, rngs=)`, which
    also takes `text=` and `text_mask=` when conditions carry a prompt.

    The network sees the log-SNR of t; the wrapper returns x̂ = α_t z − σ_t v̂ in float32.
    """

    def model_fn(params, z, t, cond, train, dropout_rng):
        alpha, sigma = schedule.alpha_sigma(t)
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        label, text = conditioning.model_kwargs(cond)
        v_hat = apply_fn(
            {"params": params}, z, schedule.logsnr(t), label, train=train, rngs=rngs, **text
        )
        return diffusion.x_from_v(v_hat.astype(jnp.float32), z, alpha, sigma)

    return model_fn


def teacher_steps_at(
    iteration: Array | int,
    start: float = 64,
    end: float = 1280,
    anneal_iterations: int = 100_000,
) -> Array:
    """N_teacher(i): geometric annealing from `start` to `end` over `anneal_iterations`."""
    if start < 1 or end < 1:
        raise ValueError(f"teacher steps start and end must be >= 1, got start={start}, end={end}")
    if anneal_iterations < 1:
        raise ValueError(f"anneal_iterations must be >= 1, got {anneal_iterations}")
    frac = jnp.clip(jnp.asarray(iteration, jnp.float32) / anneal_iterations, 0.0, 1.0)
    return jnp.exp(math.log(start) + frac * (math.log(end) - math.log(start)))


def segment_steps(student_steps: int, n_teacher: Array) -> Array:
    """N_seg = max(1, round(N_teacher / S)), the teacher steps inside one student segment."""
    return jnp.maximum(1, jnp.round(jnp.asarray(n_teacher, jnp.float32) / student_steps)).astype(
        jnp.int32
    )


def sample_times(
    rng: Array, batch_size: int, student_steps: int, n_teacher: Array | float
) -> tuple[Array, Array, Array]:
    """Draws (t_step, t, s) per example on Algorithm 1's grid, each float32 of shape (batch,).

    step ~ U{0..S−1}, n ~ U{1..N_seg}; t_step = step/S, t = t_step + n/T, s = t_step + (n−1)/T with
    T = N_seg·S, so s = t_step exactly when n = 1.
    """
    if not (isinstance(student_steps, int) and student_steps >= 1):
        raise ValueError(f"student_steps must be an integer >= 1, got {student_steps!r}")
    n_seg = segment_steps(student_steps, n_teacher)
    total = (n_seg * student_steps).astype(jnp.float32)
    rng_step, rng_n = jax.random.split(rng)
    step = jax.random.randint(rng_step, (batch_size,), 0, student_steps)
    n = jax.random.randint(rng_n, (batch_size,), 1, n_seg + 1)
    t_step = step.astype(jnp.float32) / student_steps
    t = t_step + n.astype(jnp.float32) / total
    s = t_step + (n - 1).astype(jnp.float32) / total
    return t_step, t, s


def consistency_target(
    x_hat_ref: Array,
    z_s: Array,
    z_t: Array,
    t: Array,
    s: Array,
    t_step: Array,
    schedule: Schedule,
) -> Array:
    """x_target = invDDIM_{t→t_step}(DDIM_{s→t_step}(x̂_ref, z_s), z_t).

    The x that, used for a single DDIM jump from z_t, lands where the reference jump from z_s lands.
    """
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    alpha_step, sigma_step = schedule.alpha_sigma(t_step)
    z_ref = diffusion.ddim_step(x_hat_ref, z_s, alpha_s, sigma_s, alpha_step, sigma_step)
    return diffusion.inverse_ddim(z_ref, z_t, alpha_t, sigma_t, alpha_step, sigma_step)


def pseudo_huber(delta: Array, c: float) -> Array:
    """Per-example sqrt(mean(δ²) + c²) − c, shape (batch,), in float32 whatever δ's dtype.

    Large c approaches mean(δ²)/(2c).
    """
    if not c > 0:
        raise ValueError(f"huber c must be > 0, got {c}")
    delta = jnp.asarray(delta, jnp.float32)
    return jnp.sqrt(diffusion.per_example_mean(delta**2) + c**2) - c


def weighted_delta(x_hat: Array, x_target: Array, sigma_t: Array, weighting: str) -> Array:
    """The difference the distance measures, in float32: the v-space (x̂ − x)/σ_t for "v" (the
    paper's v-loss), the x-space x̂ − x for "x" and "snr_plus_one" (see `loss_weight`)."""
    x_hat = jnp.asarray(x_hat, jnp.float32)
    x_target = jnp.asarray(x_target, jnp.float32)
    if weighting == "v":
        return (x_hat - x_target) / diffusion.expand_to(sigma_t, x_hat)
    if weighting in ("x", "snr_plus_one", "truncated_snr"):
        return x_hat - x_target
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def loss_weight(sigma_t: Array, weighting: str) -> Array:
    """w_t, the factor on each example's distance: SNR(t) + 1 = 1/σ_t² for "snr_plus_one" (the
    paper's Algorithm 1 read literally, L = w_t·‖x̂_diff‖), max(SNR(t), 1) = max(α_t², σ_t²)/σ_t²
    for "truncated_snr" (progressive distillation's weighting), 1 for "v" and "x"."""
    sigma_t = jnp.asarray(sigma_t, jnp.float32)
    if weighting == "snr_plus_one":
        return 1.0 / sigma_t**2
    if weighting == "truncated_snr":  # variance preserving: α_t² = 1 − σ_t²
        return jnp.maximum(1.0 - sigma_t**2, sigma_t**2) / sigma_t**2
    if weighting in ("v", "x"):
        return jnp.ones_like(sigma_t)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def distance(delta: Array, kind: str, huber_c: float) -> Array:
    """Per-example distance of δ in float32: mean squared error or pseudo-Huber."""
    if kind == "mse":
        return diffusion.per_example_mean(jnp.asarray(delta, jnp.float32) ** 2)
    if kind == "pseudo_huber":
        return pseudo_huber(delta, huber_c)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


def multiscale_distance(delta: Array, kind: str, huber_c: float, pools: int) -> Array:
    """Simple diffusion's multiscale loss: `distance` of δ, plus 2^k × `distance` of δ after k
    successive 2×2 average poolings for k = 1..`pools`.

    Hoogeboom et al. (2023) sum L^{s×s}/s over the resolutions s; this is that sum times the full
    resolution, so the full-resolution term keeps weight 1 and `pools` = 0 is the plain loss.
    Pooling is linear, so pooling the error equals the error of the pooled prediction.
    """
    total = distance(delta, kind, huber_c)
    for k in range(1, pools + 1):
        if delta.shape[1] % 2 or delta.shape[2] % 2:
            raise ValueError(f"2x2 pooling {k} of {pools} needs even sides, got {delta.shape[1:3]}")
        delta = nn.avg_pool(delta, (2, 2), strides=(2, 2))
        total = total + 2.0**k * distance(delta, kind, huber_c)
    return total


def weighted_loss(
    x_hat: Array,
    x_target: Array,
    sigma_t: Array,
    *,
    weighting: str,
    kind: str,
    huber_c: float,
    pools: int,
) -> Array:
    """Per-example loss w_t · `multiscale_distance`(δ) with δ = `weighted_delta` and w_t =
    `loss_weight`: the one formula behind the diffusion and the consistency loss."""
    delta = weighted_delta(x_hat, x_target, sigma_t, weighting)
    return loss_weight(sigma_t, weighting) * multiscale_distance(delta, kind, huber_c, pools)


def check_multiscale_pools(pools: int) -> None:
    """`multiscale_pools` is a count of 2x2 poolings: an integer >= 0."""
    if not (isinstance(pools, int) and pools >= 0):
        raise ValueError(f"multiscale_pools must be an integer >= 0, got {pools!r}")


@dataclasses.dataclass(frozen=True)
class DiffusionLossConfig:
    """The teacher's objective: `distance` of `weighting`-space errors at t ~ U(0, 1), over
    `multiscale_pools` + 1 resolutions (`multiscale_distance`)."""

    weighting: str = "v"
    distance: str = "mse"
    huber_c: float = 1e-4
    label_dropout: float = 0.0
    null_label: int = 0
    multiscale_pools: int = 0

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if not self.huber_c > 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        check_multiscale_pools(self.multiscale_pools)


@dataclasses.dataclass(frozen=True)
class ConsistencyLossConfig:
    """The student's objective. CT and CD: the multistep consistency objective (paper's Algorithm
    1; defaults from its appendix A.1), w_t · pseudo-Huber of the `weighting`-space error over
    `multiscale_pools` + 1 resolutions. PD: progressive distillation (`pd_loss`), rounds of
    `pd_round_steps` iterations from `pd_start_steps` student steps halving to `student_steps`,
    w_t · squared error of the `weighting`-space error; the teacher_steps, xvar_frac and huber_c
    fields do not apply to it."""

    method: str = "cd"
    student_steps: int = 8
    teacher_steps_start: float = 64
    teacher_steps_end: float = 1280
    anneal_iterations: int = 100_000
    xvar_frac: float = 0.75
    huber_c: float = 1e-4
    weighting: str = "v"
    guidance_weight: float = 0.0
    null_label: int = 0
    multiscale_pools: int = 0
    pd_start_steps: int = 1024
    pd_round_steps: int = 50_000

    def __post_init__(self):
        if self.method not in STUDENT_METHODS:
            raise ValueError(f"method must be one of {STUDENT_METHODS}, got {self.method!r}")
        if not (isinstance(self.student_steps, int) and self.student_steps >= 1):
            raise ValueError(f"student_steps must be an integer >= 1, got {self.student_steps!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.xvar_frac < 0:
            raise ValueError(f"xvar_frac must be >= 0, got {self.xvar_frac}")
        if not self.huber_c > 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")
        if self.guidance_weight < 0:
            raise ValueError(f"guidance_weight must be >= 0, got {self.guidance_weight}")
        if self.guidance_weight > 0 and self.method == "ct":
            raise ValueError(
                "guidance_weight > 0 needs method 'cd' or 'pd' (guidance comes from a teacher)"
            )
        check_multiscale_pools(self.multiscale_pools)
        if self.method == "pd":
            pd_rounds(self.pd_start_steps, self.student_steps)
            if not (isinstance(self.pd_round_steps, int) and self.pd_round_steps >= 1):
                raise ValueError(
                    f"pd_round_steps must be an integer >= 1, got {self.pd_round_steps!r}"
                )
        teacher_steps_at(0, self.teacher_steps_start, self.teacher_steps_end, self.anneal_iterations)


def noisy(x: Array, eps: Array, t: Array, schedule: Schedule) -> Array:
    """z_t = α_t x + σ_t ε."""
    alpha, sigma = schedule.alpha_sigma(t)
    return diffusion.expand_to(alpha, x) * x + diffusion.expand_to(sigma, x) * eps


def diffusion_loss_at(
    params: Params,
    model_fn: ModelFn,
    x: Array,
    cond: conditioning.Condition,
    eps: Array,
    t: Array,
    dropout_rng: Array | None,
    *,
    schedule: Schedule,
    config: DiffusionLossConfig,
) -> Array:
    """Per-example diffusion loss at given times and noise."""
    z_t = noisy(x, eps, t, schedule)
    x_hat = model_fn(params, z_t, t, cond, True, dropout_rng)
    _, sigma_t = schedule.alpha_sigma(t)
    return weighted_loss(
        x_hat,
        x,
        sigma_t,
        weighting=config.weighting,
        kind=config.distance,
        huber_c=config.huber_c,
        pools=config.multiscale_pools,
    )


def diffusion_loss(
    params: Params,
    batch: dict[str, Array],
    rng: Array,
    *,
    model_fn: ModelFn,
    schedule: Schedule,
    config: DiffusionLossConfig,
) -> tuple[Array, dict[str, Array]]:
    """The teacher's loss on a batch {image, label[, text, text_mask]}: (mean loss, metrics).
    Conditions (label and prompt together) are dropped at config.label_dropout for guidance."""
    x = batch["image"].astype(jnp.float32)
    rng_t, rng_eps, rng_label, rng_dropout = jax.random.split(rng, 4)
    t = jax.random.uniform(rng_t, (x.shape[0],), jnp.float32)
    eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
    cond = conditioning.drop(
        rng_label, conditioning.from_batch(batch), config.label_dropout, config.null_label
    )
    per_example = diffusion_loss_at(
        params, model_fn, x, cond, eps, t, rng_dropout, schedule=schedule, config=config
    )
    loss = jnp.mean(per_example)
    return loss, {"loss": loss}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """What consistency distillation needs of its teacher: a model function and its parameters."""

    model_fn: ModelFn
    params: Params


def teacher_denoise(
    teacher: Teacher,
    z_t: Array,
    t: Array,
    cond: conditioning.Condition,
    config: ConsistencyLossConfig,
    guidance_scale: Array | float = 1.0,
) -> tuple[Array, Array]:
    """(x_teacher, x_cond): the (guided) teacher prediction and its conditional part.

    With guidance weight w = `guidance_scale` · config.guidance_weight, x_teacher = x_cond +
    w (x_cond − x_uncond), x_uncond under the null condition (null label, empty prompt); both
    halves run as one batch of twice the size. (PD guides only its first round: scale 0 after.)
    """
    if config.guidance_weight == 0.0:
        x_cond = teacher.model_fn(teacher.params, z_t, t, cond, False, None)
        return x_cond, x_cond
    both = teacher.model_fn(
        teacher.params,
        jnp.concatenate([z_t, z_t]),
        jnp.concatenate([t, t]),
        conditioning.with_null(cond, config.null_label),
        False,
        None,
    )
    x_cond, x_uncond = jnp.split(both, 2)
    weight = guidance_scale * config.guidance_weight
    return x_cond + weight * (x_cond - x_uncond), x_cond


def consistency_loss_at(
    params: Params,
    model_fn: ModelFn,
    x: Array,
    cond: conditioning.Condition,
    eps: Array,
    times: tuple[Array, Array, Array],
    dropout_rng: Array | None,
    *,
    schedule: Schedule,
    config: ConsistencyLossConfig,
    teacher: Teacher | None = None,
) -> Array:
    """Per-example multistep consistency loss at given (t_step, t, s) and noise (Algorithm 1).
    Under guidance, x_var comes from the teacher's conditional output, not the guided one."""
    t_step, t, s = times
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    z_t = noisy(x, eps, t, schedule)

    if config.method == "ct":
        x_teacher, x_var = x, jnp.zeros(x.shape[:1], jnp.float32)
    else:
        if teacher is None:
            raise ValueError("method 'cd' needs a teacher (teacher model function and parameters)")
        x_teacher, x_cond = teacher_denoise(teacher, z_t, t, cond, config)
        x_var = diffusion.distillation_x_var(x_cond, x, config.xvar_frac)
    z_s = diffusion.addim_step(x_teacher, z_t, alpha_t, sigma_t, alpha_s, sigma_s, x_var)

    x_hat = model_fn(params, z_t, t, cond, True, dropout_rng)
    # The reference uses the student's own current parameters and the same dropout mask.
    x_hat_ref = jax.lax.stop_gradient(model_fn(params, z_s, s, cond, True, dropout_rng))
    x_target = consistency_target(x_hat_ref, z_s, z_t, t, s, t_step, schedule)
    return weighted_loss(
        x_hat,
        x_target,
        sigma_t,
        weighting=config.weighting,
        kind="pseudo_huber",
        huber_c=config.huber_c,
        pools=config.multiscale_pools,
    )


def consistency_loss(
    params: Params,
    batch: dict[str, Array],
    rng: Array,
    iteration: Array | int,
    *,
    model_fn: ModelFn,
    schedule: Schedule,
    config: ConsistencyLossConfig,
    teacher: Teacher | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The MCM loss (CT or CD) on a batch {image, label[, text, text_mask]} at a train iteration:
    (loss, metrics)."""
    x = batch["image"].astype(jnp.float32)
    rng_times, rng_eps, rng_dropout = jax.random.split(rng, 3)
    n_teacher = teacher_steps_at(
        iteration, config.teacher_steps_start, config.teacher_steps_end, config.anneal_iterations
    )
    times = sample_times(rng_times, x.shape[0], config.student_steps, n_teacher)
    eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
    per_example = consistency_loss_at(
        params,
        model_fn,
        x,
        conditioning.from_batch(batch),
        eps,
        times,
        rng_dropout,
        schedule=schedule,
        config=config,
        teacher=teacher,
    )
    loss = jnp.mean(per_example)
    n_seg = segment_steps(config.student_steps, n_teacher)
    return loss, {"loss": loss, "n_teacher": n_teacher, "n_segment": n_seg.astype(jnp.float32)}


# ----------------------------------------------------------------------------------------------
# Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512; docs/method.md §10).


def pd_rounds(start_steps: int, student_steps: int) -> int:
    """How many rounds halve the student's sampling steps from `start_steps` (N, the first
    round's student; its teacher takes 2N DDIM steps) down to `student_steps` (S): log2(N/S) + 1.
    N must be S times a power of 2."""
    if not (isinstance(start_steps, int) and isinstance(student_steps, int)
            and student_steps >= 1 and start_steps >= student_steps
            and start_steps % student_steps == 0
            and (start_steps // student_steps) & (start_steps // student_steps - 1) == 0):
        raise ValueError(
            f"pd_start_steps must be student_steps ({student_steps!r}) times a power of 2, so "
            f"that halving reaches it (e.g. {student_steps!r}, 2·{student_steps!r}, "
            f"4·{student_steps!r}, ...), got {start_steps!r}"
        )
    return (start_steps // student_steps).bit_length()


def pd_round(step: Array | int, round_steps: int, rounds: int) -> Array:
    """The round (0-based) that train step `step` belongs to: rounds of `round_steps` steps; the
    last round goes on for any steps beyond rounds × round_steps. int32."""
    return jnp.minimum(jnp.asarray(step, jnp.int32) // round_steps, rounds - 1)


def pd_round_student_steps(round_index: Array | int, start_steps: int) -> Array:
    """The student's sampling steps in a round: N / 2^round. int32."""
    return jnp.right_shift(jnp.int32(start_steps), jnp.asarray(round_index, jnp.int32))


def pd_starts_round(step: Array | int, round_steps: int, rounds: int) -> Array:
    """Whether `step` is the first step of a round after the first: where the student of the
    round that ended becomes the teacher and the new student's starting point."""
    step = jnp.asarray(step, jnp.int32)
    return (step > 0) & (step % round_steps == 0) & (step // round_steps < rounds)


def pd_sample_times(
    rng: Array, batch_size: int, student_steps: Array | int
) -> tuple[Array, Array, Array]:
    """(t, t', t'') per example on the N-step student grid (Algorithm 2): t = i/N with
    i ~ U{1..N}, t' = t − 0.5/N, t'' = t − 1/N. float32, each of shape (batch,)."""
    n = jnp.asarray(student_steps, jnp.int32)
    i = jax.random.randint(rng, (batch_size,), 1, n + 1).astype(jnp.float32)
    n = n.astype(jnp.float32)
    return i / n, (i - 0.5) / n, (i - 1.0) / n


def pd_target(
    teacher_fn: Callable[[Array, Array], Array],
    z_t: Array,
    t: Array,
    t_mid: Array,
    s: Array,
    schedule: Schedule,
) -> Array:
    """The progressive distillation target (Algorithm 2): two teacher DDIM steps
    z_t → z_{t'} → z_{t''} with x̂ = teacher_fn(z, t), then the x̃ whose single DDIM step from z_t
    lands on z_{t''}: x̃ = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t), the
    inverse DDIM step. `schedule` only needs `alpha_sigma(t) -> (α_t, σ_t)`."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_mid, sigma_mid = schedule.alpha_sigma(t_mid)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    z_mid = diffusion.ddim_step(teacher_fn(z_t, t), z_t, alpha_t, sigma_t, alpha_mid, sigma_mid)
    z_s = diffusion.ddim_step(
        teacher_fn(z_mid, t_mid), z_mid, alpha_mid, sigma_mid, alpha_s, sigma_s
    )
    return diffusion.inverse_ddim(z_s, z_t, alpha_t, sigma_t, alpha_s, sigma_s)


def pd_loss(
    params: Params,
    batch: dict[str, Array],
    rng: Array,
    iteration: Array | int,
    *,
    model_fn: ModelFn,
    schedule: Schedule,
    config: ConsistencyLossConfig,
    teacher: Teacher,
) -> tuple[Array, dict[str, Array]]:
    """The progressive distillation loss on a batch at a train iteration: (loss, metrics).

    The round is a function of the iteration (`pd_round`), so is the student's step count N; the
    teacher (the frozen student of the previous round, or the diffusion model in round 0, guided
    by config.guidance_weight in round 0 only) runs without dropout. Per example:
    w_t · mean((x̂ − x̃)²) in `config.weighting` space, over `multiscale_pools` + 1 resolutions.
    """
    x = batch["image"].astype(jnp.float32)
    cond = conditioning.from_batch(batch)
    rng_times, rng_eps, rng_dropout = jax.random.split(rng, 3)
    rounds = pd_rounds(config.pd_start_steps, config.student_steps)
    round_index = pd_round(iteration, config.pd_round_steps, rounds)
    n = pd_round_student_steps(round_index, config.pd_start_steps)
    t, t_mid, s = pd_sample_times(rng_times, x.shape[0], n)
    eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
    z_t = noisy(x, eps, t, schedule)
    guidance_scale = (round_index == 0).astype(jnp.float32)
    teacher_fn = lambda z, time: teacher_denoise(
        teacher, z, time, cond, config, guidance_scale
    )[0]
    x_target = jax.lax.stop_gradient(pd_target(teacher_fn, z_t, t, t_mid, s, schedule))
    x_hat = model_fn(params, z_t, t, cond, True, rng_dropout)
    _, sigma_t = schedule.alpha_sigma(t)
    per_example = weighted_loss(
        x_hat, x_target, sigma_t, weighting=config.weighting, kind="mse",
        huber_c=config.huber_c, pools=config.multiscale_pools,
    )
    loss = jnp.mean(per_example)
    return loss, {
        "loss": loss, "pd_round": round_index.astype(jnp.float32),
        "pd_student_steps": n.astype(jnp.float32),
    }
