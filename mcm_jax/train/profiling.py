"""A device trace of a few train steps, for TensorBoard's profile plugin.

`--config.training.profile_steps=N` makes the training loop trace N steps on process 0, starting
after `WARMUP_STEPS` steps of the run (the first compiles the step, so it is not traced). The
trace (`jax.profiler`) goes to `<workdir>/plugins/profile/<timestamp>/*.xplane.pb`, where
`tensorboard --logdir=<workdir>` finds it (Profile tab, with the tensorboard-plugin-profile package).
"""

from __future__ import annotations

from typing import Any

import jax

WARMUP_STEPS = 2


class StepProfiler:
    """Call `after_step(step, outputs)` after each train step and `stop()` when the loop ends.

    The trace covers the steps numbered first_step + 1 ... first_step + num_steps: it starts once
    step `first_step` has finished on the device and stops once the last traced step has, so the
    trace holds exactly those steps' device work. Processes other than 0 and num_steps = 0 do
    nothing.
    """

    def __init__(self, logdir: str, num_steps: int, first_step: int):
        self.logdir = logdir
        self.num_steps = num_steps if jax.process_index() == 0 else 0
        self.first_step = first_step
        self.running = False

    def after_step(self, step: int, outputs: Any) -> None:
        """Starts or stops the trace at the window's edges (blocking on `outputs` there only)."""
        if not self.num_steps:
            return
        if step == self.first_step:
            jax.block_until_ready(outputs)
            jax.profiler.start_trace(self.logdir)
            self.running = True
        elif self.running and step == self.first_step + self.num_steps:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Ends a running trace (also when the loop ended inside the window) and writes it."""
        if self.running:
            jax.profiler.stop_trace()
            self.running = False
