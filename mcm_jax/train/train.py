"""The training job: `Trainer` (a RunSetup plus optimizer, train-state shardings and the jitted
step) and the loop, `train(config, workdir)`.

The loop resumes from the workdir's latest checkpoint (state and data position, into whatever
mesh this run has), logs with clu (process 0), writes sample grids with the eval job's sampler
(compiled once per run), and on a preemption notice saves the step that every process agrees on
and returns. The pure step and the state it updates are in mcm_jax.train.train_step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mcm_jax import images, paths
from mcm_jax.config import config_lib, data_config
from mcm_jax.eval import prompts
from mcm_jax.method import losses
from mcm_jax.models import stacking
from mcm_jax.progress import ProgressFn
from mcm_jax.run import checkpointing, multihost, resume_config, run_setup, sharding, workdir_lock
from mcm_jax.run.run_setup import abstract_params, init_params, Params, RunSetup
from mcm_jax.train import hardware, preemption, profiling
from mcm_jax.train.train_step import (
    create_train_state, is_progressive_distillation, make_optimizer, make_train_step,
    train_flops_per_example, TrainState,
)


class Trainer:
    """What training adds to a RunSetup: the optimizer, the train state's layout and the jitted,
    donating train step (and, for a student, the teacher's parameter layout)."""

    def __init__(self, setup: RunSetup, teacher_config: ml_collections.ConfigDict | None = None):
        config = setup.config
        self.setup = setup
        self.optimizer = make_optimizer(config)
        # Progressive distillation keeps its round's teacher in the state, not as a step argument.
        self.teacher_in_state = is_progressive_distillation(config)

        rng = jax.random.PRNGKey(config.seed)
        init = lambda rng: create_train_state(
            init_params(setup.model, config, rng), self.optimizer, len(config.ema_decays),
            with_teacher=self.teacher_in_state,
        )
        abstract_state = jax.eval_shape(init, rng)
        self.state_shardings = sharding.tree_shardings(
            abstract_state, setup.mesh, config.mesh.fsdp_min_size
        )
        self.abstract_state = checkpointing.abstract_like(abstract_state, self.state_shardings)
        self._init = jax.jit(init, out_shardings=self.state_shardings)

        teacher_model_fn, teacher_shardings = None, None
        if config.objective == "mcm":
            teacher_model = run_setup.build_model(teacher_config or config)
            teacher_model_fn = losses.make_model_fn(teacher_model.apply, setup.schedule)
            self.abstract_teacher_params = abstract_params(teacher_model, config, setup.mesh)
            if not self.teacher_in_state:
                teacher_shardings = jax.tree.map(lambda a: a.sharding, self.abstract_teacher_params)
        batch_shardings = {
            key: sharding.batch_sharding(setup.mesh)
            for key in run_setup.batch_spec(config, config.training.batch_size)
        }
        self.train_step = jax.jit(
            make_train_step(config, setup.model_fn, self.optimizer, teacher_model_fn),
            in_shardings=(self.state_shardings, batch_shardings, teacher_shardings),
            out_shardings=(self.state_shardings, sharding.replicated(setup.mesh)),
            donate_argnums=0,
        )

    def init_state(self) -> TrainState:
        return self._init(jax.random.PRNGKey(self.setup.config.seed))

    def state_from_params(self, params: Params) -> TrainState:
        """A fresh state (step 0, new optimizer, EMA = params) starting from given parameters,
        of either block layout (a teacher may scan its blocks and the student not, or the
        reverse: models/stacking.py)."""
        num_ema = len(self.setup.config.ema_decays)
        layout = stacking.tree_layout(self.abstract_state.params)
        make = lambda p: create_train_state(
            stacking.to_layout(p, layout) if layout else p, self.optimizer, num_ema,
            with_teacher=self.teacher_in_state,
        )
        return jax.jit(make, out_shardings=self.state_shardings)(params)


def grid_sampler(setup: RunSetup, num_images: int) -> Callable[[Params], np.ndarray]:
    """`grid(params)`: `num_images` class-cycling samples (text models: of the first prompts of
    the eval prompt set, eval.prompts_dir/prompts_split) from `params` with the run's own sampler (run_setup.own_sampler), as uint8
    NHWC. It is the eval job's batch sampler, built once so every grid of a run reuses one
    compiled program; the noise is config.seed's, the same at every step."""
    c = setup.config
    setting = run_setup.own_sampler(c)
    batch_size = -(-num_images // setup.mesh.size) * setup.mesh.size  # split over every device
    sample_batch = setup.batch_sampler(setting, seed=c.seed, batch_size=batch_size)
    extra = ()
    if data_config.text_shape(c.data) is not None:
        feed = prompts.PromptFeed(prompts.eval_prompts(c), batch_size, setup.mesh)
        extra = (feed(0),)

    def grid(params: Params) -> np.ndarray:
        samples = multihost_utils.process_allgather(sample_batch(params, 0, *extra), tiled=True)
        return images.to_uint8(np.asarray(samples)[:num_images])

    return grid


def _mean_metrics(buffer: list[dict]) -> dict[str, float]:
    host = jax.device_get(buffer)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train(
    config: ml_collections.ConfigDict, workdir: str, *, progress: ProgressFn | None = None
) -> TrainState:
    """Trains (or resumes) the run in `workdir` up to config.training.num_steps; `progress(step,
    num_steps)` is called after every step (host-side integers only: it never waits for the device)."""
    from mcm_jax.data import input_pipeline

    setup = RunSetup.create(config)  # validates the config, the one time in a training job
    teacher_config = None
    if config.objective == "mcm":
        run_setup.check_teacher_workdir(config)
        teacher_config = run_setup.check_teacher_matches(config)
    trainer = Trainer(setup, teacher_config)
    input_pipeline.validate(config.data, global_batch_size=config.training.batch_size)
    paths.check_writable(workdir, "workdir")
    input_pipeline.prepare(config.data)
    # The teacher's checkpoint is loaded before anything is written, so a bad one leaves no trace.
    teacher_params = (
        run_setup.load_teacher(config, trainer.abstract_teacher_params)
        if config.objective == "mcm" else None
    )
    # Process 0 holds the workdir for the run: a second run there is refused before it writes.
    held = workdir_lock.WorkdirLock(workdir) if multihost.is_chief() else contextlib.nullcontext()
    with held:
        return _train_in_workdir(config, workdir, trainer, teacher_params, progress)


def _train_in_workdir(
    config: ml_collections.ConfigDict, workdir: str, trainer: Trainer, teacher_params,
    progress: ProgressFn | None,
) -> TrainState:
    """`train` from the moment it holds the workdir: claims it, resumes or starts, and trains."""
    resume_config.claim_workdir(workdir, config)
    t = config.training
    ckpt = checkpointing.Checkpointer(
        workdir, keep=t.keep_checkpoints, keep_period=t.keep_period,
        async_checkpointing=t.async_checkpointing,
    )

    # Watch for preemption from here on: restoring a large state takes a while.
    watcher = preemption.PreemptionWatcher(ckpt.manager, ckpt.latest_step() or 0)
    with watcher:
        state, data_state = _initial_state(trainer, ckpt, teacher_params)
        if trainer.teacher_in_state:
            teacher_params = None  # the state holds the round's teacher: drop the loaded copy
        start_step = int(state.step)
        if multihost.is_chief():
            logging.info("resuming from step %d" if start_step else "starting at step %d", start_step)
        if start_step >= t.num_steps:
            logging.warning(
                "nothing to train: the run in %s is at step %d and config.training.num_steps is "
                "%d; raise num_steps to train further", workdir, start_step, t.num_steps,
            )
        state = _train_loop(
            config, workdir, trainer, ckpt, watcher, state, data_state, teacher_params,
            progress or (lambda done, total: None),
        )
    ckpt.wait()
    ckpt.close()
    end_step = int(state.step)
    if multihost.is_chief():  # the loop stops before num_steps only for a preemption notice
        logging.info("finished at step %d" if end_step >= t.num_steps
                     else "saved step %d, exiting for requeue", end_step)
    return state


def _initial_state(
    trainer: Trainer, ckpt: checkpointing.Checkpointer, teacher_params
) -> tuple[TrainState, dict | None]:
    """The state and data position to continue from: the newest intact checkpoint (restored
    into this run's mesh and shardings, whatever mesh wrote it), else a fresh state (a student
    starts from its teacher's weights)."""
    latest = ckpt.restore_latest(trainer.abstract_state)
    if latest is not None:
        _, items, meta = latest
        state = TrainState(
            step=jnp.asarray(meta["step"], jnp.int32), nonfinite_step=jnp.asarray(-1, jnp.int32),
            **items,
        )
        return jax.device_put(state, trainer.state_shardings), meta["data_state"]
    if teacher_params is not None:
        return trainer.state_from_params(teacher_params), None
    return trainer.init_state(), None


def _train_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    trainer: Trainer,
    ckpt: checkpointing.Checkpointer,
    watcher: preemption.PreemptionWatcher,
    state: TrainState,
    data_state: dict | None,
    teacher_params,
    progress: ProgressFn,
) -> TrainState:
    """Steps to config.training.num_steps or to an agreed preemption step, saving on the way."""
    from clu import parameter_overview, periodic_actions

    from mcm_jax.data import input_pipeline

    t = config.training
    step = int(state.step)
    is_chief = multihost.is_chief()
    writer = multihost.metric_writer(workdir, asynchronous=True)
    if step == 0 and is_chief:
        parameter_overview.log_parameter_overview(state.params)
        writer.write_hparams(config_lib.flat_hparams(config))
    data = input_pipeline.create_train_iterator(
        config.data, global_batch_size=t.batch_size, seed=config.seed, state=data_state
    )
    report = (
        periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer)
        if is_chief else lambda step: None
    )
    flops_per_step = train_flops_per_example(config) * t.batch_size
    peak_tflops = hardware.peak_tflops(config.peak_tflops_per_device, jax.devices()[0].device_kind)
    profiler = profiling.StepProfiler(workdir, t.profile_steps, step + profiling.WARMUP_STEPS)
    grid = grid_sampler(trainer.setup, t.sample_images) if t.sample_every else None
    buffer: list[dict] = []
    first_step = step
    last_time, last_step = time.time(), step

    def check_finite(state):
        bad = int(state.nonfinite_step)
        if bad >= 0:
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad}; training stopped. "
                + ckpt.last_good_message()
            )

    while step < t.num_steps:
        batch = sharding.host_local_to_global(next(data), trainer.setup.mesh)
        state, metrics = trainer.train_step(state, batch, teacher_params)
        step += 1
        progress(step, t.num_steps)
        profiler.after_step(step, metrics)
        if step == first_step + 1:
            # Time from the end of the first step on, so compilation is not counted as speed.
            # Besides this one, the loop waits for the device only on log, checkpoint and sample
            # steps (tests/test_speed_guards.py), so the host keeps dispatching ahead.
            jax.block_until_ready(metrics)
            last_time, last_step = time.time(), step
        buffer.append(metrics)
        report(step)
        logged = step % t.log_every == 0 or step == t.num_steps
        if logged:
            check_finite(state)
            scalars = _mean_metrics(buffer)
            buffer = []
            steps_per_sec = (step - last_step) / (time.time() - last_time)
            tflops = flops_per_step * steps_per_sec / jax.device_count() / 1e12
            scalars.update(
                steps_per_sec=steps_per_sec,
                examples_per_sec=steps_per_sec * t.batch_size,
                tflops_per_device=tflops,
            )
            if peak_tflops:  # None for a device mcm_jax.train.hardware does not know
                scalars["mfu"] = tflops / peak_tflops
            writer.write_scalars(step, scalars)
        preempted = watcher.reached(step)
        if step % t.checkpoint_every == 0 or step == t.num_steps or preempted:
            check_finite(state)
            ckpt.save(step, state, data.get_state())
        if t.sample_every and step % t.sample_every == 0:
            samples = grid(state.ema_params[0])
            if is_chief:
                images.write_grid(workdir, f"samples_{step:08d}", samples, writer, step)
        if logged:
            # The device has finished this step (its metrics were read): time the next interval
            # from here, so this step's checkpoint and sample grid are not counted as steps.
            last_time, last_step = time.time(), step
        if preempted:
            break
    profiler.stop()
    ckpt.wait()
    writer.flush()
    return state
