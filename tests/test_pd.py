"""Progressive distillation (Salimans & Ho 2022): its target, its round schedule, exact resume."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.config import config_lib, presets
from mcm_jax.method import losses
from mcm_jax.run import checkpointing
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train


class _Float64Cosine:
    """α_t = cos(πt/2), σ_t = sin(πt/2) in float64: a schedule for exact checks."""

    def alpha_sigma(self, t):
        t = jnp.asarray(t, jnp.float64)
        return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)


def _ddim(x, z, a_t, s_t, a_s, s_s):
    return a_s * x + (s_s / s_t) * (z - a_t * x)


def test_pd_target_is_two_teacher_ddim_steps_inverted_to_x_in_float64():
    """Gaussian data x ~ N(μ, diag(v)), whose exact denoiser is the posterior mean
    E[x | z_t] = μ + α_t v / (α_t² v + σ_t²) (z_t − α_t μ): the target equals Algorithm 2's
    x̃ = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t) of two teacher DDIM steps
    written out here in numpy, and one DDIM step with it from z_t lands on z_{t''}."""
    n, d = 8, 5
    rng = np.random.default_rng(0)
    mu, var = rng.normal(size=d), rng.uniform(0.1, 2.0, size=d)
    i = np.arange(1, n + 1, dtype=np.float64)
    t, t_mid, s = i / n, (i - 0.5) / n, (i - 1.0) / n  # every step of the N-step grid
    schedule = _Float64Cosine()
    cos_sin = lambda u: (np.cos(0.5 * np.pi * u)[:, None], np.sin(0.5 * np.pi * u)[:, None])
    (a_t, s_t), (a_m, s_m), (a_s, s_s) = cos_sin(t), cos_sin(t_mid), cos_sin(s)
    x = mu + np.sqrt(var) * rng.normal(size=(n, d))
    z_t = a_t * x + s_t * rng.normal(size=(n, d))

    def posterior_mean(z, alpha):
        sigma2 = 1.0 - alpha**2
        return mu + alpha * var / (alpha**2 * var + sigma2) * (z - alpha * mu)

    z_mid = _ddim(posterior_mean(z_t, a_t), z_t, a_t, s_t, a_m, s_m)
    z_s = _ddim(posterior_mean(z_mid, a_m), z_mid, a_m, s_m, a_s, s_s)
    expected = (z_s - (s_s / s_t) * z_t) / (a_s - (s_s / s_t) * a_t)

    with jax.enable_x64(True):
        def teacher_fn(z, time):
            alpha, _ = schedule.alpha_sigma(time)
            alpha = alpha[:, None]
            return mu + alpha * var / (alpha**2 * var + 1.0 - alpha**2) * (z - alpha * mu)

        target = losses.pd_target(teacher_fn, jnp.asarray(z_t), t, t_mid, s, schedule)
        assert target.dtype == jnp.float64
        target = np.asarray(target)
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_ddim(target, z_t, a_t, s_t, a_s, s_s), z_s, rtol=1e-12, atol=1e-12)


def test_pd_times_are_the_student_grid_with_the_teacher_midpoint():
    t, t_mid, s = losses.pd_sample_times(jax.random.PRNGKey(0), 4096, jnp.int32(8))
    np.testing.assert_allclose(t - s, 1 / 8, atol=1e-6)
    np.testing.assert_allclose(t_mid, (t + s) / 2, atol=1e-6)
    assert set(np.round(np.asarray(t) * 8).astype(int)) == set(range(1, 9))


def test_pd_rounds_halve_the_steps_down_to_s_at_the_right_training_steps():
    assert [losses.pd_rounds(n, s) for n, s in ((32, 4), (8, 8), (8, 1), (256, 1))] == [4, 1, 4, 9]
    rounds, round_steps = 4, 10
    steps = np.arange(45)
    index = np.asarray(losses.pd_round(steps, round_steps, rounds))
    student = np.asarray(losses.pd_round_student_steps(index, 32))
    assert list(student[[0, 9, 10, 19, 20, 29, 30, 44]]) == [32, 32, 16, 16, 8, 8, 4, 4]
    assert int(losses.pd_round_student_steps(losses.pd_round(10**6, round_steps, rounds), 32)) == 4
    starts = np.asarray(losses.pd_starts_round(steps, round_steps, rounds))
    assert list(steps[starts]) == [10, 20, 30]  # not 0 (the diffusion teacher), not 40 (S goes on)


def test_pd_refuses_s_not_reached_by_halving_and_a_budget_short_of_the_last_round():
    config = presets.digits_pd("steps=4,model=tiny")
    config.mcm.student_steps = 3
    with pytest.raises(ValueError, match=r"^config.mcm: pd_start_steps must be student_steps \(3\) "
                       r"times a power of 2, so that halving reaches it .* got 32$"):
        config_lib.consistency_loss_config(config)
    with pytest.raises(ValueError, match="^config argument steps=3: pd_start_steps must be"):
        presets.digits_pd("steps=3")
    config = presets.digits_pd("steps=4,model=tiny")  # 32 -> 4: 4 rounds of 375
    config.training.num_steps = 3 * 375
    with pytest.raises(ValueError, match=r"^config.training.num_steps: 1125 ends before the last "
                       r"of the 4 .* starts at step 1125 \(mcm.pd_round_steps=375\); give at "
                       r"least 1500"):
        config_lib.consistency_loss_config(config)


def test_truncated_snr_weight_is_max_of_snr_and_one():
    sigma = jnp.asarray([0.05, 0.5, np.sqrt(0.5), 0.9, 0.999])
    snr = (1 - sigma**2) / sigma**2
    np.testing.assert_allclose(
        losses.loss_weight(sigma, "truncated_snr"), np.maximum(snr, 1.0), rtol=1e-5
    )


def _tree_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(
        lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b
    )))


@pytest.mark.slow
def test_pd_resumes_mid_round_bit_identically(tmp_path, digits_data_dir):
    """6 steps straight equal 3 steps, a SIGTERM (the preemption path: save and stop), and a
    restart to 6: rounds of 2 steps from 4 student steps to 1, so the stop is in the middle of
    round 1, whose teacher (round 0's EMA) must come back from the checkpoint."""
    teacher_dir = str(tmp_path / "teacher")  # an untrained teacher: its weights are all PD needs
    teacher = presets.digits_diffusion("model=tiny")
    checkpointing.write_config(teacher_dir, teacher)
    ckpt = checkpointing.Checkpointer(teacher_dir)
    ckpt.save(1, train.Trainer(RunSetup.create(teacher)).init_state(), data_state={})
    ckpt.wait()
    ckpt.close()

    config = presets.digits_pd("steps=1,model=tiny")
    config.data.data_dir = str(digits_data_dir)
    config.teacher.workdir = teacher_dir
    config.mcm.update(pd_start_steps=4, pd_round_steps=2)
    config.optimizer.warmup_steps = 1
    config.ema_decays = (0.5,)
    config.training.update(batch_size=8, num_steps=6, checkpoint_every=100, log_every=3,
                           sample_every=0)
    straight = train.train(config, str(tmp_path / "straight"))

    def stop_at_3(step, total):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train.train(config, str(tmp_path / "resumed"), progress=stop_at_3)
    assert int(stopped.step) == 3
    resumed = train.train(config, str(tmp_path / "resumed"))
    assert int(straight.step) == int(resumed.step) == 6
    for field in ("params", "ema_params", "opt_state", "teacher"):
        assert _tree_equal(getattr(straight, field), getattr(resumed, field)), field
    # The teacher changed at the round starts: it is no longer the diffusion model.
    assert not _tree_equal(straight.teacher, stopped.params)
