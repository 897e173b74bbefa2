"""When to stop for a preemption: one step that every process agrees on.

Schedulers warn a job before they take its machines away: SLURM sends SIGTERM (`--signal`, and at
the time limit or `scancel`), Cloud TPU VMs and GCE send SIGTERM before a spot or maintenance
eviction. The warning reaches each host at its own moment, so a per-process flag makes the hosts
enter the collective checkpoint save at different steps, and they wait for each other forever.

With several processes this relies on JAX's preemption service, which `jax.distributed.initialize`
starts: its notifier catches SIGTERM on any process, tells the coordination service, and the
processes agree in the background on the first step that none of them has passed yet. orbax's
`CheckpointManager.reached_preemption(step)` returns True at that step on every process, and only
there; the loop saves that step and exits. Asking costs a mutex per step, no communication.

With one process the same question is answered by a SIGTERM handler that sets a flag.
"""

from __future__ import annotations

import signal

import jax
import orbax.checkpoint as ocp
from absl import logging


class PreemptionWatcher:
    """`reached(step)` is True at the step where the run should save and stop.

    Use as a context manager around the training loop. Call `reached` with every step the loop
    completes, from the restored step on, on every process: the agreed step is computed from the
    steps the processes last reported.
    """

    def __init__(self, manager: ocp.CheckpointManager, start_step: int):
        self._manager = manager
        self._start_step = start_step
        self._multiprocess = jax.process_count() > 1
        self._requested = False
        self._previous_handler = None

    def __enter__(self) -> "PreemptionWatcher":
        if self._multiprocess:
            if not jax.config.jax_enable_preemption_service:
                logging.warning(
                    "jax_enable_preemption_service is off: a SIGTERM kills this process without "
                    "a checkpoint; the run resumes from its last periodic checkpoint."
                )
            # Report the starting step at once: a notice that arrives before any step has been
            # reported would leave the processes without a step to agree on.
            self.reached(self._start_step)
        else:
            try:
                self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: nothing to install
                self._previous_handler = None
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self._requested = True

    def reached(self, step: int) -> bool:
        """Whether `step` is the step to save and stop at."""
        if self._multiprocess:
            stop = self._manager.reached_preemption(step)
        else:
            stop = self._requested
        if stop:
            logging.warning(
                "process %d: preemption notice: saving step %d and stopping.",
                jax.process_index(), step,
            )
        return stop

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
