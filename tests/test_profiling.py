"""--config.training.profile_steps: a trace of the chosen steps, written where TensorBoard looks."""

from unittest import mock

import jax
import jax.numpy as jnp
import pytest

from mcm_jax.config import config_lib, presets
from mcm_jax.train import profiling, train


def test_profiler_traces_exactly_the_window_and_stops_early_runs():
    calls = []
    with mock.patch.object(jax.profiler, "start_trace", lambda logdir: calls.append(("start", step))), \
            mock.patch.object(jax.profiler, "stop_trace", lambda: calls.append(("stop", step))):
        profiler = profiling.StepProfiler("/unused", num_steps=3, first_step=12)
        for step in range(11, 20):
            profiler.after_step(step, jnp.zeros(()))
        profiler.stop()
        assert calls == [("start", 12), ("stop", 15)]  # steps 13, 14, 15 are traced

        calls.clear()
        profiler = profiling.StepProfiler("/unused", num_steps=5, first_step=12)
        for step in range(11, 14):  # the run ends inside the window
            profiler.after_step(step, jnp.zeros(()))
        profiler.stop()
        assert calls == [("start", 12), ("stop", 13)]

        calls.clear()
        profiler = profiling.StepProfiler("/unused", num_steps=0, first_step=12)
        for step in range(11, 20):
            profiler.after_step(step, jnp.zeros(()))
        profiler.stop()
        assert calls == []


@pytest.mark.slow
def test_training_writes_a_trace_tensorboard_can_open(tmp_path, digits_data_dir):
    config = presets.digits_diffusion("model=tiny")
    config.data.data_dir = str(digits_data_dir)
    config.data.shuffle_buffer = 500
    config.training.update(batch_size=32, num_steps=6, log_every=3, checkpoint_every=6,
                           sample_every=0, profile_steps=2)
    train.train(config, str(tmp_path))
    traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_negative_profile_steps_fail_validation():
    config = presets.digits_diffusion("model=tiny")
    config.training.profile_steps = -1
    with pytest.raises(ValueError, match="config.training.profile_steps"):
        config_lib.validate(config, num_devices=1)
