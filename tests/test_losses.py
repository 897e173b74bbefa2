"""The multistep consistency loss: time grid, annealing, target identities, exact-student check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.experiments.mixture import GaussianMixture
from mcm_jax.method import diffusion, losses
from mcm_jax.method.schedules import get_schedule

SCHEDULE = get_schedule("cosine")


@pytest.mark.parametrize("student_steps", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("n_teacher", [1.0, 7.0, 64.0, 100.0, 1280.0])
def test_sample_times_lie_on_the_grid(student_steps, n_teacher):
    t_step, t, s = (
        np.asarray(a, np.float64)
        for a in losses.sample_times(jax.random.PRNGKey(0), 4096, student_steps, n_teacher)
    )
    n_seg = max(1, round(n_teacher / student_steps))
    total = n_seg * student_steps
    step = t_step * student_steps
    np.testing.assert_allclose(step, np.round(step), atol=1e-5)
    assert set(np.round(step).astype(int)) == set(range(student_steps))
    n = (t - t_step) * total
    np.testing.assert_allclose(n, np.round(n), atol=1e-3)
    assert np.round(n).min() == 1 and np.round(n).max() == n_seg
    np.testing.assert_allclose(t - s, 1.0 / total, atol=1e-6)
    assert np.all(s >= t_step) and np.all(t <= 1.0 + 1e-6)
    np.testing.assert_array_equal(s[np.round(n) == 1], t_step[np.round(n) == 1])


def test_teacher_steps_anneal_geometrically():
    at = lambda i: float(losses.teacher_steps_at(i, 64, 1280, 100_000))
    assert at(0) == pytest.approx(64)
    assert at(50_000) == pytest.approx(math.sqrt(64 * 1280), rel=1e-5)
    assert at(100_000) == pytest.approx(1280, rel=1e-5)
    assert at(250_000) == pytest.approx(1280, rel=1e-5)
    assert int(losses.segment_steps(8, at(0))) == 8
    assert int(losses.segment_steps(8, at(100_000))) == 160
    assert int(losses.segment_steps(1280, 64.0)) == 1


def test_target_at_segment_start_is_inverse_ddim():
    z_s, z_t, x_ref = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 4, 4, 1))
    t, s = jnp.full((8,), 0.6), jnp.full((8,), 0.5)
    target = losses.consistency_target(x_ref, z_s, z_t, t, s, s, SCHEDULE)
    coeffs = (*SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s))
    np.testing.assert_allclose(target, diffusion.inverse_ddim(z_s, z_t, *coeffs), rtol=1e-4, atol=1e-4)


def _toy_model_fn(params, z, t, label, train, dropout_rng):
    """x̂ = w z + b(label) with a dropout-like random mask: enough to exercise the loss."""
    x_hat = params["w"] * z + diffusion.expand_to(params["b"][label], z)
    if train and dropout_rng is not None:
        x_hat = x_hat * jax.random.bernoulli(dropout_rng, 0.8, z.shape) / 0.8
    return x_hat


TOY_PARAMS = {"w": jnp.float32(0.7), "b": jnp.array([0.1, -0.2, 0.3], jnp.float32)}


def test_ct_with_one_teacher_step_per_segment_is_the_diffusion_loss():
    """Paper eq. 9: with N_seg = 1, s = t_step, the CT target is x and the loss the v-loss."""
    student_steps, batch = 4, 64
    x, eps = jax.random.normal(jax.random.PRNGKey(1), (2, batch, 6))
    label = jnp.arange(batch) % 3
    times = losses.sample_times(jax.random.PRNGKey(2), batch, student_steps, n_teacher=1.0)
    t_step, t, s = times
    np.testing.assert_array_equal(s, t_step)
    z_t = losses.noisy(x, eps, t, SCHEDULE)
    z_s = diffusion.ddim_step(x, z_t, *SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s))
    target = losses.consistency_target(jnp.zeros_like(x), z_s, z_t, t, s, t_step, SCHEDULE)
    np.testing.assert_allclose(target, x, rtol=1e-4, atol=1e-4)

    dropout = jax.random.PRNGKey(3)
    config = losses.ConsistencyLossConfig(method="ct", student_steps=student_steps, huber_c=1e-4)
    ct = losses.consistency_loss_at(
        TOY_PARAMS, _toy_model_fn, x, label, eps, times, dropout, schedule=SCHEDULE, config=config
    )
    diff_config = losses.DiffusionLossConfig(distance="pseudo_huber", huber_c=1e-4)
    v_loss = losses.diffusion_loss_at(
        TOY_PARAMS, _toy_model_fn, x, label, eps, t, dropout, schedule=SCHEDULE, config=diff_config
    )
    np.testing.assert_allclose(ct, v_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_reference_uses_the_same_dropout_mask_and_no_gradient():
    batch = 32
    x, eps = jax.random.normal(jax.random.PRNGKey(4), (2, batch, 5))
    label = jnp.zeros(batch, jnp.int32)
    t_step = jnp.zeros(batch)
    t, s = jnp.full((batch,), 0.2), jnp.full((batch,), 0.15)
    config = losses.ConsistencyLossConfig(method="ct", student_steps=4, huber_c=1.0)
    dropout = jax.random.PRNGKey(5)

    def by_hand(params):
        z_t = losses.noisy(x, eps, t, SCHEDULE)
        z_s = diffusion.ddim_step(x, z_t, *SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s))
        x_hat = _toy_model_fn(params, z_t, t, label, True, dropout)
        x_ref = jax.lax.stop_gradient(_toy_model_fn(params, z_s, s, label, True, dropout))
        target = losses.consistency_target(x_ref, z_s, z_t, t, s, t_step, SCHEDULE)
        sigma_t = SCHEDULE.alpha_sigma(t)[1][:, None]
        return jnp.mean(losses.pseudo_huber((x_hat - target) / sigma_t, 1.0))

    def by_loss(params):
        return jnp.mean(
            losses.consistency_loss_at(
                params, _toy_model_fn, x, label, eps, (t_step, t, s), dropout,
                schedule=SCHEDULE, config=config,
            )
        )

    np.testing.assert_allclose(by_loss(TOY_PARAMS), by_hand(TOY_PARAMS), rtol=1e-5)
    grads, grads_by_hand = jax.grad(by_loss)(TOY_PARAMS), jax.grad(by_hand)(TOY_PARAMS)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_by_hand)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


MIXTURE = GaussianMixture()


def _segment_start(t, student_steps):
    """t_step of the segment (t_step, t_step + 1/S] that holds t; 0 at t = 0."""
    return jnp.maximum(jnp.ceil(t * student_steps - 1e-4) - 1, 0) / student_steps


def _exact_student(student_steps, perturbation=lambda x_hat, t, t_step: x_hat):
    """The exact segment-jump map of the mixture as a model function, optionally perturbed."""

    def model_fn(params, z, t, label, train, dropout_rng):
        t_step = _segment_start(t, student_steps)
        jump = MIXTURE.segment_jump(z, t, t_step, SCHEDULE, substeps=256)
        inside = diffusion.expand_to(t - t_step > 1e-6, z)
        return perturbation(jnp.where(inside, jump, z), t, t_step)

    return model_fn


def _exact_teacher():
    model_fn = lambda params, z, t, label, train, rng: MIXTURE.denoise(z, *SCHEDULE.alpha_sigma(t))
    return losses.Teacher(model_fn=model_fn, params=None)


@pytest.mark.slow
def test_exact_segment_jump_has_near_zero_distillation_loss():
    """The exact multistep consistency map of the mixture (64 i.i.d. coordinates) is a fixed point
    of CD with the exact teacher: its loss vanishes as the teacher steps grow, while a student off
    by a constant or by a scale error that grows across the segment keeps a loss far above it.

    The teacher step is plain DDIM (xvar_frac = 0): DDIM with E[x|z] is the probability-flow
    solver whose limit the exact jump is. aDDIM's extra variance is meant for imperfect teachers
    and moves the target off that flow on purpose.
    """
    student_steps, batch, dim = 2, 512, 64
    batch_data = {
        "image": MIXTURE.sample(jax.random.PRNGKey(6), batch, dim),
        "label": jnp.zeros(batch, jnp.int32),
    }

    def loss_of(model_fn, n_teacher):
        config = losses.ConsistencyLossConfig(
            method="cd", student_steps=student_steps, teacher_steps_start=n_teacher,
            teacher_steps_end=n_teacher, xvar_frac=0.0, huber_c=1e-4,
        )
        fn = lambda: losses.consistency_loss(
            None, batch_data, jax.random.PRNGKey(7), 0, model_fn=model_fn, schedule=SCHEDULE,
            config=config, teacher=_exact_teacher(),
        )[0]
        return float(jax.jit(fn)())

    exact_coarse = loss_of(_exact_student(student_steps), 64)
    exact = loss_of(_exact_student(student_steps), 1280)
    offset = loss_of(_exact_student(student_steps, lambda x, t, t_step: x + 0.05), 1280)
    ramp = loss_of(
        _exact_student(
            student_steps,
            lambda x, t, t_step: x * (1 + 0.1 * student_steps * (t - t_step))[:, None],
        ),
        1280,
    )
    # Measured: exact 3.2e-3 at 64 teacher steps, 1.1e-5 at 1280; offset 2.1e-3; ramp 5.5e-4.
    assert exact < 0.01 * exact_coarse
    assert exact < 0.05 * ramp and exact < 0.05 * offset, (exact, ramp, offset)


def _pool_by_hand(x: np.ndarray) -> np.ndarray:
    b, h, w, c = x.shape
    out = np.zeros((b, h // 2, w // 2, c))
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("kind", ["mse", "pseudo_huber"])
def test_multiscale_distance_sums_pooled_errors_weighted_by_the_pooling_factor(kind):
    delta = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (3, 8, 8, 2)), np.float64)

    def by_hand(d):
        per = np.mean(d**2, axis=(1, 2, 3))
        return per if kind == "mse" else np.sqrt(per + 0.5**2) - 0.5

    once, twice = _pool_by_hand(delta), _pool_by_hand(_pool_by_hand(delta))
    for pools, expected in (
        (0, by_hand(delta)),
        (1, by_hand(delta) + 2 * by_hand(once)),
        (2, by_hand(delta) + 2 * by_hand(once) + 4 * by_hand(twice)),
    ):
        got = losses.multiscale_distance(jnp.asarray(delta, jnp.float32), kind, 0.5, pools)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling 4 of 4 needs even sides"):
        losses.multiscale_distance(jnp.asarray(delta, jnp.float32), kind, 0.5, 4)


def test_multiscale_loss_weights_coarse_errors_and_ignores_pixel_noise():
    """An error constant on 2x2 blocks counts at both scales (1 + 2 = 3x); a checkerboard error,
    pure highest frequency, pools to zero and counts once."""
    coarse = jnp.kron(jax.random.normal(jax.random.PRNGKey(8), (2, 4, 4, 1)), jnp.ones((1, 2, 2, 3)))
    checker = (-1.0) ** (jnp.arange(8)[:, None] + jnp.arange(8)[None, :])
    fine = jnp.broadcast_to(checker[None, :, :, None], (2, 8, 8, 3)) * 0.3
    for delta, factor in ((coarse, 3.0), (fine, 1.0)):
        single = losses.multiscale_distance(delta, "mse", 1.0, 0)
        np.testing.assert_allclose(losses.multiscale_distance(delta, "mse", 1.0, 1), factor * single, rtol=1e-6)


def test_multiscale_diffusion_loss_is_the_pooled_v_loss():
    """diffusion_loss_at with one pooling = v-loss + 2 x v-loss of the pooled images' error."""
    x, eps = jax.random.normal(jax.random.PRNGKey(9), (2, 4, 8, 8, 3))
    t = jax.random.uniform(jax.random.PRNGKey(10), (4,))
    label = jnp.zeros(4, jnp.int32)
    model_fn = lambda params, z, t, label, train, rng: params["w"] * z + jnp.mean(z, axis=(1, 2), keepdims=True)
    args = (TOY_PARAMS, model_fn, x, label, eps, t, None)
    plain = losses.diffusion_loss_at(*args, schedule=SCHEDULE, config=losses.DiffusionLossConfig())
    multi = losses.diffusion_loss_at(
        *args, schedule=SCHEDULE, config=losses.DiffusionLossConfig(multiscale_pools=1)
    )
    x_hat = model_fn(TOY_PARAMS, losses.noisy(x, eps, t, SCHEDULE), t, label, True, None)
    pooled_error = _pool_by_hand(np.asarray(x_hat - x)) / np.asarray(SCHEDULE.alpha_sigma(t)[1])[:, None, None, None]
    np.testing.assert_allclose(multi, plain + 2 * np.mean(pooled_error**2, axis=(1, 2, 3)), rtol=1e-4)


def test_bad_loss_configs_name_the_field():
    with pytest.raises(ValueError, match="student_steps must be an integer >= 1"):
        losses.ConsistencyLossConfig(student_steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        losses.ConsistencyLossConfig(method="gan")
    with pytest.raises(ValueError, match="weighting must be one of"):
        losses.ConsistencyLossConfig(weighting="snr")
    with pytest.raises(ValueError, match="huber_c must be > 0"):
        losses.ConsistencyLossConfig(huber_c=0.0)
    with pytest.raises(ValueError, match="guidance_weight > 0 needs method 'cd' or 'pd'"):
        losses.ConsistencyLossConfig(method="ct", guidance_weight=1.0)
    with pytest.raises(ValueError, match="teacher steps start and end must be >= 1"):
        losses.ConsistencyLossConfig(teacher_steps_start=0)
    with pytest.raises(ValueError, match="student_steps must be an integer >= 1"):
        losses.sample_times(jax.random.PRNGKey(0), 4, 0, 64.0)
    with pytest.raises(ValueError, match="distance must be one of"):
        losses.DiffusionLossConfig(distance="l1")
    with pytest.raises(ValueError, match="multiscale_pools must be an integer >= 0"):
        losses.DiffusionLossConfig(multiscale_pools=-1)
    with pytest.raises(ValueError, match="needs a teacher"):
        losses.consistency_loss(
            TOY_PARAMS, {"image": jnp.zeros((2, 3)), "label": jnp.zeros(2, jnp.int32)},
            jax.random.PRNGKey(0), 0, model_fn=_toy_model_fn, schedule=SCHEDULE,
            config=losses.ConsistencyLossConfig(method="cd"),
        )


def _ct_pieces(x, eps, times, dropout):
    """(x̂, x_target, σ_t) of CT at given times, step by step as in Algorithm 1."""
    t_step, t, s = times
    label = jnp.zeros(x.shape[0], jnp.int32)
    z_t = losses.noisy(x, eps, t, SCHEDULE)
    z_s = diffusion.ddim_step(x, z_t, *SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s))
    x_hat = _toy_model_fn(TOY_PARAMS, z_t, t, label, True, dropout)
    x_ref = _toy_model_fn(TOY_PARAMS, z_s, s, label, True, dropout)
    target = losses.consistency_target(x_ref, z_s, z_t, t, s, t_step, SCHEDULE)
    sigma_t = SCHEDULE.alpha_sigma(t)[1]
    return tuple(np.asarray(a, np.float64) for a in (x_hat, target, sigma_t))


def _ct_loss(x, eps, times, dropout, **config):
    config = losses.ConsistencyLossConfig(method="ct", student_steps=4, **config)
    label = jnp.zeros(x.shape[0], jnp.int32)
    return np.asarray(
        losses.consistency_loss_at(
            TOY_PARAMS, _toy_model_fn, x, label, eps, times, dropout,
            schedule=SCHEDULE, config=config,
        ),
        np.float64,
    )


def _huber_by_hand(delta, c):
    return np.sqrt(np.mean(delta**2, axis=tuple(range(1, delta.ndim))) + c**2) - c


def test_snr_plus_one_weighting_is_algorithm_1_read_literally():
    """weighting "snr_plus_one": L = (SNR(t) + 1)·pseudo-Huber(x̂ − x_target), SNR + 1 = 1/σ_t²,
    against "v": pseudo-Huber((x̂ − x_target)/σ_t). For the diffusion MSE both are the v-loss
    (paper section 3.1: "v-loss (equivalent to SNR + 1 weighting)")."""
    batch, c = 16, 0.01
    x, eps = jax.random.normal(jax.random.PRNGKey(11), (2, batch, 6))
    t_step = jnp.zeros(batch)
    t = jnp.linspace(0.05, 0.25, batch)
    times, dropout = (t_step, t, t - 0.05), jax.random.PRNGKey(12)
    x_hat, target, sigma_t = _ct_pieces(x, eps, times, dropout)
    delta = x_hat - target
    literal = _ct_loss(x, eps, times, dropout, weighting="snr_plus_one", huber_c=c)
    np.testing.assert_allclose(literal, _huber_by_hand(delta, c) / sigma_t**2, rtol=1e-4)
    v_loss = _ct_loss(x, eps, times, dropout, weighting="v", huber_c=c)
    np.testing.assert_allclose(v_loss, _huber_by_hand(delta / sigma_t[:, None], c), rtol=1e-4)
    assert np.all(literal > 1.5 * v_loss)  # 1/σ_t² against about 1/σ_t: not the same loss

    label = jnp.zeros(batch, jnp.int32)
    diffusion_loss = lambda weighting: losses.diffusion_loss_at(
        TOY_PARAMS, _toy_model_fn, x, label, eps, t, None, schedule=SCHEDULE,
        config=losses.DiffusionLossConfig(weighting=weighting),
    )
    np.testing.assert_allclose(diffusion_loss("snr_plus_one"), diffusion_loss("v"), rtol=1e-5)


def test_multiscale_consistency_loss_adds_the_pooled_error():
    """mcm multiscale_pools = 1: the pseudo-Huber of the v-space error plus 2 × that of its 2x2
    average pooling (simple diffusion's multiscale loss on the consistency error)."""
    batch, c = 4, 0.01
    x, eps = jax.random.normal(jax.random.PRNGKey(13), (2, batch, 8, 8, 3))
    t_step = jnp.full((batch,), 0.25)
    t = jnp.array([0.3, 0.4, 0.45, 0.5])
    times, dropout = (t_step, t, t - 0.04), jax.random.PRNGKey(14)
    x_hat, target, sigma_t = _ct_pieces(x, eps, times, dropout)
    delta = (x_hat - target) / sigma_t[:, None, None, None]
    expected = _huber_by_hand(delta, c) + 2 * _huber_by_hand(_pool_by_hand(delta), c)
    multi = _ct_loss(x, eps, times, dropout, huber_c=c, multiscale_pools=1)
    np.testing.assert_allclose(multi, expected, rtol=1e-4)
    single = _ct_loss(x, eps, times, dropout, huber_c=c)
    np.testing.assert_allclose(single, _huber_by_hand(delta, c), rtol=1e-4)
    with pytest.raises(ValueError, match="multiscale_pools must be an integer >= 0"):
        losses.ConsistencyLossConfig(multiscale_pools=-1)


def _target_formula(x_ref, z_s, z_t, coeffs):
    """x_target = invDDIM_{t→t_step}(DDIM_{s→t_step}(x̂_ref, z_s), z_t) written out, in the dtype of
    its arguments (numpy float64 or jax bfloat16)."""
    a_t, s_t, a_s, s_s, a_k, s_k = coeffs
    z_ref = a_k * x_ref + (s_k / s_s) * (z_s - a_s * x_ref)
    ratio = s_k / s_t
    return (z_ref - ratio * z_t) / (a_k - a_t * ratio)


def test_bfloat16_network_leaves_target_ddim_and_loss_in_float32():
    """The network may compute in bfloat16; the method must not: the target divides by
    α_step − α_t σ_step/σ_t, about 1e-3 one teacher step (1/1280) from the segment start."""
    n, d = 64, 16
    bf16, f32 = jnp.bfloat16, jnp.float32
    x, eps, noise = jax.random.normal(jax.random.PRNGKey(15), (3, n, d))
    t_step, s, t = (jnp.full((n,), 0.5 + k / 1280) for k in (0, 1, 2))
    z_t = losses.noisy(x, eps, t, SCHEDULE)

    # A network that computes and returns bfloat16: the model function hands x̂ on in float32.
    apply_fn = lambda variables, z, logsnr, label, train, rngs: (
        variables["params"]["w"].astype(bf16) * z.astype(bf16)
    )
    model_fn = losses.make_model_fn(apply_fn, SCHEDULE)
    assert apply_fn({"params": TOY_PARAMS}, z_t, t, None, True, None).dtype == bf16
    x_hat = model_fn(TOY_PARAMS, z_t, t, None, True, None)
    assert x_hat.dtype == f32

    # DDIM, invDDIM, aDDIM and the target given bfloat16 values compute in float32.
    x_ref = (x + 0.1 * noise).astype(bf16)
    coeffs = (*SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s))
    z_s = diffusion.ddim_step(x, z_t, *coeffs)
    up = lambda a: a.astype(bf16).astype(f32)
    for fn, args in (
        (diffusion.ddim_step, (x_ref, z_t.astype(bf16), *coeffs)),
        (diffusion.inverse_ddim, (z_s.astype(bf16), z_t.astype(bf16), *coeffs)),
        (diffusion.addim_step, (x_ref, z_t.astype(bf16), *coeffs, jnp.full((n,), 0.1))),
    ):
        out = fn(*args)
        assert out.dtype == f32, fn.__name__
        upcast = [up(a) if a.shape == (n, d) else a for a in args]
        np.testing.assert_array_equal(out, fn(*upcast))
    target = losses.consistency_target(x_ref, z_s, z_t, t, s, t_step, SCHEDULE)
    assert target.dtype == f32

    all_coeffs = (*coeffs, *SCHEDULE.alpha_sigma(t_step))
    as64 = lambda a: np.asarray(a, np.float64)
    exact = _target_formula(
        as64(x_ref), as64(z_s), as64(z_t), [as64(c)[:, None] for c in all_coeffs]
    )
    in_bf16 = _target_formula(
        x_ref, z_s.astype(bf16), z_t.astype(bf16), [c.astype(bf16)[:, None] for c in all_coeffs]
    )
    rel = lambda a: np.linalg.norm(as64(a) - exact) / np.linalg.norm(exact)
    assert rel(target) < 1e-4  # measured 1.5e-5
    # What bfloat16 arithmetic would do: the denominator rounds to 0 here (inf and nan).
    assert not rel(in_bf16) < 0.1

    # The loss of a bfloat16 network is float32 and equals that of its output upcast.
    bf16_model = lambda *args: _toy_model_fn(*args).astype(bf16)
    up_model = lambda *args: bf16_model(*args).astype(f32)
    label = jnp.zeros(n, jnp.int32)
    config = losses.ConsistencyLossConfig(method="ct", student_steps=2)
    loss = lambda fn: losses.consistency_loss_at(
        TOY_PARAMS, fn, x, label, eps, (t_step, t, s), jax.random.PRNGKey(16),
        schedule=SCHEDULE, config=config,
    )
    assert loss(bf16_model).dtype == f32
    np.testing.assert_array_equal(loss(bf16_model), loss(up_model))
    assert losses.pseudo_huber(x_ref, 1e-4).dtype == f32
