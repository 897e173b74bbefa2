"""The 1-D mixture miniature of Figure 1: more student steps, samples closer to exact ones."""

import json

import jax
import jax.numpy as jnp
import pytest

from mcm_jax.experiments import mixture_experiment
from mcm_jax.experiments.mixture_experiment import ExperimentConfig, MixtureMLP, SCHEDULE
from mcm_jax.method import losses

# A shortened run of the CLI (S = 1 and 8 only, fewer steps and samples than the documented run).
SHORT_RUN = [
    "mixture_experiment", "--pretrain_steps", "2000", "--train_steps", "1500", "--steps", "1,8",
    "--num_samples", "10000", "--seed", "0",
]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixture") / "results.json"
    mixture_experiment.main([*SHORT_RUN, "--output", str(path)])
    with open(path) as f:
        return json.load(f)


def test_mlp_has_the_uvit_call_signature():
    model = MixtureMLP()
    z, t = jnp.ones((4, 1)), jnp.linspace(0.1, 0.9, 4)
    label = jnp.zeros((4,), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), z, SCHEDULE.logsnr(t), label, train=False)["params"]
    model_fn = losses.make_model_fn(model.apply, SCHEDULE)
    x_hat = model_fn(params, z, t, label, True, jax.random.PRNGKey(1))
    assert x_hat.shape == (4, 1) and bool(jnp.all(jnp.isfinite(x_hat)))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="train_steps must be >= 1"):
        ExperimentConfig(train_steps=0)
    with pytest.raises(ValueError, match="student_steps must be integers >= 1"):
        ExperimentConfig(student_steps=(0, 8))
    with pytest.raises(ValueError, match="methods must be among"):
        ExperimentConfig(methods=("gan",))


@pytest.mark.slow
def test_eight_student_steps_are_closer_to_exact_samples_than_one(short_run):
    w1 = short_run["w1"]
    # Measured W1(S = 8) / W1(S = 1) on this run for seeds 0, 1, 2: CT 0.19, 0.23, 0.19;
    # CD 0.20, 0.18, 0.22 (seed 0: CT 0.043 / 0.226, CD 0.039 / 0.190).
    for method in ("CT", "CD"):
        row = w1[f"{method} student"]
        assert row["8"] < 0.4 * row["1"], (method, row)


@pytest.mark.slow  # the shortened run takes 11 s
def test_eight_step_students_beat_eight_step_ddim_with_the_exact_denoiser(short_run):
    """DDIM with E[x|z] at 8 steps pulls samples in between the modes; the students learned the
    segment jumps instead. The pretrained teacher, also sampled by 8 DDIM steps, is about as bad
    as the exact denoiser: that shows the pretraining worked and the gain is the students'."""
    w1 = short_run["w1"]
    exact_ddim = w1["exact denoiser, DDIM"]["8"]
    # Measured student / exact-DDIM W1 at S = 8 for seeds 0, 1, 2: CT 0.66, 0.70, 0.72;
    # CD 0.60, 0.56, 0.65 (seed 0: exact DDIM 0.064, CT 0.043, CD 0.039).
    for method in ("CT", "CD"):
        assert w1[f"{method} student"]["8"] < 0.9 * exact_ddim, (method, w1)
    # Measured teacher / exact-DDIM W1 at S = 8 for seeds 0, 1, 2: 1.09, 1.12, 1.31.
    assert 0.75 * exact_ddim < w1["diffusion teacher, DDIM"]["8"] < 1.5 * exact_ddim, w1


@pytest.mark.slow
def test_the_table_has_a_row_per_sampler_and_a_column_per_step(short_run):
    table = mixture_experiment.format_table(short_run)
    assert "| W1 to exact samples | S = 1 | S = 8 |" in table
    for row in ("exact denoiser, DDIM", "diffusion teacher, DDIM", "CT student", "CD student"):
        assert f"| {row} |" in table
    assert "noise floor" in table
