"""The sharded train step: one device and 8 fake devices (data, and data × fsdp) agree; sample
grids during training reuse the eval job's sampler, compiled once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax import images
from mcm_jax.config import config_lib
from mcm_jax.run import batch_sampler
from mcm_jax.run import sharding
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

BATCH = 16


def _config(objective, method="cd", data=-1, fsdp=1):
    config = config_lib.with_model(config_lib.base_config(), "tiny")
    config.objective = objective
    config.diffusion.multiscale_pools = 1  # the ImageNet128 teachers' loss, pooled under sharding
    config.mcm.method = method
    config.mcm.student_steps = 2
    config.teacher.workdir = "unused-by-the-step"
    config.training.batch_size = BATCH
    config.optimizer.warmup_steps = 1
    config.optimizer.learning_rate = 1e-3
    config.mesh.data = data
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 64  # shard even the tiny model's parameters
    config.ema_decays = (0.9, 0.5)
    return config


def _batches(n):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.uniform(-1, 1, (BATCH, 16, 16, 1)).astype(np.float32),
            "label": rng.integers(0, 10, BATCH).astype(np.int32),
        }
        for _ in range(n)
    ]


def _run(config, devices, steps=2):
    trainer = train.Trainer(RunSetup.create(config, devices=devices))
    state = trainer.init_state()
    teacher = None
    if config.objective == "mcm":
        # A teacher that differs from the student: the student's init, perturbed.
        wiggle = lambda p: p + 0.01 * jnp.sin(jnp.arange(p.size).reshape(p.shape))
        teacher = jax.device_put(
            jax.tree.map(wiggle, state.params),
            jax.tree.map(lambda a: a.sharding, trainer.abstract_teacher_params),
        )
    losses = []
    for batch in _batches(steps):
        state, metrics = trainer.train_step(
            state, sharding.host_local_to_global(batch, trainer.setup.mesh), teacher
        )
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses, trainer


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective, method", [("diffusion", "cd"), ("mcm", "ct"), ("mcm", "cd")]
)
def test_sharded_step_matches_one_device(objective, method):
    one_state, one_losses, _ = _run(_config(objective, method), jax.devices()[:1])
    # Data × fsdp for every objective; data alone once (the same code path without fsdp).
    meshes = [(8, 1), (4, 2)] if objective == "diffusion" else [(4, 2)]
    for data, fsdp in meshes:
        state, losses, trainer = _run(_config(objective, method, data, fsdp), jax.devices())
        if fsdp > 1:
            specs = [s.spec for s in jax.tree.leaves(trainer.state_shardings.params)]
            assert any("fsdp" in str(spec) for spec in specs)  # parameters really are split
        np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(one_state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(one_state.ema_params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert int(state.step) == 2 and int(state.nonfinite_step) == -1


@pytest.mark.slow
def test_nonfinite_step_is_recorded_and_skipped():
    config = _config("diffusion")
    trainer = train.Trainer(RunSetup.create(config, devices=jax.devices()[:1]))
    state = trainer.init_state()
    before = jax.device_get(state.params)
    batch = _batches(1)[0]
    batch["image"][0, 0, 0, 0] = np.nan
    batch = sharding.host_local_to_global(batch, trainer.setup.mesh)
    state, metrics = trainer.train_step(state, batch, None)
    assert int(state.nonfinite_step) == 0 and not np.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["diffusion", "mcm"])
def test_sample_grids_reuse_the_eval_sampler_compiled_once(objective, monkeypatch):
    """Every grid of a run calls one jitted eval-job sampler (compiled once, for 8 devices even
    for 4 images) and shows the eval job's first samples at config.seed."""
    built = []
    make = batch_sampler.make_batch_sampler
    monkeypatch.setattr(
        batch_sampler, "make_batch_sampler", lambda *a, **k: built.append(make(*a, **k)) or built[-1]
    )
    config = _config(objective)
    setup = RunSetup.create(config)
    params = train.Trainer(setup).init_state().ema_params[0]
    grid = train.grid_sampler(setup, 4)
    first, second = grid(params), grid(jax.tree.map(lambda p: p * 1.0, params))
    assert len(built) == 1 and built[0]._cache_size() == 1
    assert first.shape == (4, 16, 16, 1) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)

    steps = config.mcm.student_steps if objective == "mcm" else config.training.sample_steps
    method = "ddim" if objective == "mcm" else config.training.sample_method
    setting = batch_sampler.SamplerSetting(method, steps)
    eval_batch = setup.batch_sampler(setting, seed=config.seed, batch_size=8)(params, 0)
    np.testing.assert_array_equal(first, images.to_uint8(np.asarray(eval_batch)[:4]))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["diffusion", "mcm"])
def test_an_unconditional_model_ignores_the_labels(objective):
    """data.class_conditional=False: only the null label's embedding, and labels change nothing."""
    config = _config(objective)
    config.data.class_conditional = False
    assert config_lib.null_label(config) == 0
    state, losses, trainer = _run(config, jax.devices()[:1])
    assert trainer.setup.model.num_classes == 0 and np.all(np.isfinite(losses))
    # The label table holds only the null label's row.
    assert state.params["conditioning"]["label"]["embedding"].shape[0] == 1
    z = jnp.zeros((2, 16, 16, 1))
    t = jnp.full((2,), 0.5)
    out = [trainer.setup.model_fn(state.params, z, t, jnp.array([label] * 2), False, None)
           for label in (0, 7)]
    np.testing.assert_array_equal(out[0], out[1])
