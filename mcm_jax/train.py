"""The train state, the pure train step, and the training loop for teachers and MCM students.

`make_train_step` builds a pure function (state, batch, teacher_params) -> (state, metrics) that
the loop jits with NamedShardings over the mesh and a donated state. The loop, `train`, is
one function of (config, workdir): it resumes from the workdir's latest checkpoint (state and
data position, into whatever mesh this run has), logs with clu (process 0), writes sample grids,
and on a preemption notice saves the step that every process agrees on and returns.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mcm_jax import (
    checkpointing, config_lib, hardware, images, losses, multihost, preemption, profiling,
    resume_config, samplers, sharding,
)
from mcm_jax.models import build, flops_per_example

Params = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `nonfinite_step` is the first step whose loss or gradient was not
    finite (-1 if none); such a step leaves parameters and optimizer state untouched."""

    step: jax.Array
    params: Params
    opt_state: Any
    ema_params: tuple[Params, ...]
    nonfinite_step: jax.Array


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to the learning rate, then constant or cosine decay to 0 at num_steps."""
    o = config.optimizer
    if o.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, o.learning_rate, max(o.warmup_steps, 1), config.training.num_steps
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1)),
         optax.constant_schedule(o.learning_rate)],
        [max(o.warmup_steps, 1)],
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam(W) with warm-up and global-norm gradient clipping (0 disables clipping)."""
    o = config.optimizer
    adam = optax.adamw(
        learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay
    )
    if o.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adam)
    return adam


def model_inputs(config: ml_collections.ConfigDict, batch_size: int):
    """Dummy (z, logsnr, label) of the model's input shapes, for init and eval_shape."""
    m = config.model
    z = jnp.zeros((batch_size, m.resolution, m.resolution, m.channels), jnp.float32)
    return z, jnp.zeros((batch_size,), jnp.float32), jnp.zeros((batch_size,), jnp.int32)


def init_params(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array) -> Params:
    return model.init({"params": rng}, *model_inputs(config, 1), train=False)["params"]


def create_train_state(
    params: Params, optimizer: optax.GradientTransformation, num_ema: int
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=tuple(params for _ in range(num_ema)),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def make_loss_fn(
    config: ml_collections.ConfigDict, model_fn: losses.ModelFn, teacher_model_fn: losses.ModelFn | None
) -> Callable:
    """loss_fn(params, batch, rng, step, teacher_params) -> (loss, metrics) for the objective."""
    schedule = config_lib.schedule_from_config(config)
    if config.objective == "diffusion":
        loss_config = config_lib.diffusion_loss_config(config)

        def loss_fn(params, batch, rng, step, teacher_params):
            del step, teacher_params
            return losses.diffusion_loss(
                params, batch, rng, model_fn=model_fn, schedule=schedule, config=loss_config
            )

        return loss_fn

    loss_config = config_lib.consistency_loss_config(config)

    def loss_fn(params, batch, rng, step, teacher_params):
        teacher = None
        if loss_config.method == "cd":
            teacher = losses.Teacher(model_fn=teacher_model_fn, params=teacher_params)
        return losses.consistency_loss(
            params, batch, rng, step, model_fn=model_fn, schedule=schedule,
            config=loss_config, teacher=teacher,
        )

    return loss_fn


def make_train_step(
    config: ml_collections.ConfigDict,
    model_fn: losses.ModelFn,
    optimizer: optax.GradientTransformation,
    teacher_model_fn: losses.ModelFn | None = None,
) -> Callable[[TrainState, dict, Params | None], tuple[TrainState, dict]]:
    """The pure train step: loss, gradient, clipped Adam update, EMA, non-finite guard."""
    loss_fn = make_loss_fn(config, model_fn, teacher_model_fn)
    lr_schedule = learning_rate_schedule(config)
    decays = tuple(float(d) for d in config.ema_decays)
    seed = int(config.seed)

    def train_step(state: TrainState, batch: dict, teacher_params: Params | None):
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng, state.step, teacher_params
        )
        grad_norm = optax.tree_utils.tree_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = tuple(
            jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, ema, params)
            for d, ema in zip(decays, state.ema_params)
        )
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_finite = lambda new, old: jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), new, old
        )
        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            ema_params=keep_if_finite(ema_params, state.ema_params),
            nonfinite_step=jnp.where(
                (state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step
            ),
        )
        metrics = dict(metrics, grad_norm=grad_norm, learning_rate=lr_schedule(state.step))
        return new_state, metrics

    return train_step


def train_flops_per_example(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one example's train step: forward + backward (3×) plus extra forwards
    (the stop-gradient reference for MCM, the teacher for CD, twice with guidance)."""
    forward = flops_per_example(config.model, config.data.resolution)
    multiplier = 3.0
    if config.objective == "mcm":
        multiplier += 1.0
        if config.mcm.method == "cd":
            multiplier += 2.0 if config.mcm.guidance_weight > 0 else 1.0
    return multiplier * forward


class Trainer:
    """The compiled pieces of a run: model, mesh, shardings, the jitted step and sampler."""

    def __init__(self, config: ml_collections.ConfigDict, teacher_config=None, devices=None):
        devices = jax.devices() if devices is None else devices
        config_lib.validate(config, num_devices=len(devices))
        self.config = config
        self.mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, devices)
        self.model = build(config.model)
        self.schedule = config_lib.schedule_from_config(config)
        self.model_fn = losses.make_model_fn(self.model.apply, self.schedule)
        self.optimizer = make_optimizer(config)
        min_size = config.mesh.fsdp_min_size

        rng = jax.random.PRNGKey(config.seed)
        init = lambda rng: create_train_state(
            init_params(self.model, config, rng), self.optimizer, len(config.ema_decays)
        )
        abstract_state = jax.eval_shape(init, rng)
        self.state_shardings = sharding.tree_shardings(abstract_state, self.mesh, min_size)
        self.abstract_state = checkpointing.abstract_like(abstract_state, self.state_shardings)
        self._init = jax.jit(init, out_shardings=self.state_shardings)

        teacher_model_fn, teacher_shardings = None, None
        if config.objective == "mcm":
            teacher_model = build(teacher_config.model if teacher_config else config.model)
            teacher_model_fn = losses.make_model_fn(teacher_model.apply, self.schedule)
            abstract_params = jax.eval_shape(lambda r: init_params(teacher_model, config, r), rng)
            teacher_shardings = sharding.tree_shardings(abstract_params, self.mesh, min_size)
            self.abstract_teacher_params = checkpointing.abstract_like(
                abstract_params, teacher_shardings
            )
        batch_shardings = {
            "image": sharding.batch_sharding(self.mesh),
            "label": sharding.batch_sharding(self.mesh),
        }
        self.train_step = jax.jit(
            make_train_step(config, self.model_fn, self.optimizer, teacher_model_fn),
            in_shardings=(self.state_shardings, batch_shardings, teacher_shardings),
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )

    def init_state(self) -> TrainState:
        return self._init(jax.random.PRNGKey(self.config.seed))

    def state_from_params(self, params: Params) -> TrainState:
        """A fresh state (step 0, new optimizer, EMA = params) starting from given parameters."""
        make = lambda p: create_train_state(p, self.optimizer, len(self.config.ema_decays))
        return jax.jit(make, out_shardings=self.state_shardings)(params)

    def sample(self, params: Params, num_images: int, rng: jax.Array) -> np.ndarray:
        """Class-cycling samples from `params` with the run's sampler, as uint8 NHWC."""
        c = self.config
        m = c.model
        labels = jnp.arange(num_images) % max(m.num_classes, 1)
        if m.num_classes == 0:
            labels = jnp.zeros(num_images, jnp.int32)
        if c.objective == "mcm":
            steps, method = c.mcm.student_steps, "ddim"
        else:
            steps, method = c.training.sample_steps, c.training.sample_method

        @jax.jit
        def run(params, z_1):
            denoise = lambda z, t: self.model_fn(params, z, t, labels, False, None)
            return samplers.sample(denoise, z_1, schedule=self.schedule, steps=steps, method=method)

        z_1 = jax.random.normal(rng, (num_images, m.resolution, m.resolution, m.channels))
        return images.to_uint8(np.asarray(jax.device_get(run(params, z_1))))


def load_teacher(config: ml_collections.ConfigDict, trainer: Trainer) -> Params:
    """The teacher's EMA parameters (config.teacher), sharded for the train step."""
    t = config.teacher
    teacher_config = checkpointing.read_config(t.workdir)
    ckpt = checkpointing.Checkpointer(t.workdir, read_only=True)
    try:
        step = checkpointing.resolve_step(ckpt, t.step, t.workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.teacher.workdir: {e}") from None
    except ValueError as e:
        raise ValueError(f"config.teacher.step: {e}") from None
    num_ema = len(teacher_config.ema_decays)
    if t.ema_index >= num_ema:
        raise ValueError(
            f"config.teacher.ema_index: {t.ema_index} but the teacher has {num_ema} EMA parameter sets"
        )
    ema = ckpt.restore_ema_params(step, (trainer.abstract_teacher_params,) * num_ema)
    ckpt.close()
    return ema[t.ema_index]


ARCHITECTURE_EXEMPT = ("dtype", "attention_impl", "remat", "level_dropout", "middle_dropout", "name")


def check_teacher_matches(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reads the teacher's config and fails, naming the field, if it is not a diffusion run or
    its network differs."""
    workdir = config.teacher.workdir
    try:
        teacher_config = checkpointing.read_config(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.teacher.workdir: {e}") from None
    if teacher_config.get("objective") != "diffusion":
        raise ValueError(
            f"config.teacher.workdir: {workdir} holds a run with objective "
            f"{teacher_config.get('objective')!r}; a teacher is a run with objective 'diffusion'"
        )
    for key, value in config.model.items():
        if key in ARCHITECTURE_EXEMPT:
            continue
        teacher_value = teacher_config.model.get(key)
        if teacher_value is None or tuple(np.atleast_1d(teacher_value)) != tuple(np.atleast_1d(value)):
            raise ValueError(
                f"config.model.{key}: the student has {value!r} but the teacher in "
                f"{config.teacher.workdir} has {teacher_value!r}; students start from the teacher's "
                "weights, so the networks must match"
            )
    if teacher_config.data.resolution != config.data.resolution:
        raise ValueError(
            f"config.data.resolution: {config.data.resolution} differs from the teacher's "
            f"{teacher_config.data.resolution}"
        )
    return teacher_config


def _check_teacher_workdir(config: ml_collections.ConfigDict) -> None:
    """config.teacher.workdir must be an existing directory."""
    workdir = epath.Path(config.teacher.workdir)
    if not workdir.exists():
        raise ValueError(f"config.teacher.workdir: {str(workdir)!r} does not exist")
    if not workdir.is_dir():
        raise ValueError(
            f"config.teacher.workdir: {str(workdir)!r} is a file; give a diffusion run's workdir"
        )


def _mean_metrics(buffer: list[dict]) -> dict[str, float]:
    host = jax.device_get(buffer)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the run in `workdir` up to config.training.num_steps."""
    from mcm_jax import input_pipeline

    config_lib.validate(config)
    teacher_config = None
    if config.objective == "mcm":
        _check_teacher_workdir(config)
        teacher_config = check_teacher_matches(config)
    trainer = Trainer(config, teacher_config)
    input_pipeline.validate(config.data, global_batch_size=config.training.batch_size)
    # The teacher's checkpoint is loaded before anything is written, so a bad one leaves no trace.
    teacher_params = load_teacher(config, trainer) if config.objective == "mcm" else None
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
        state = _train_loop(
            config, workdir, trainer, ckpt, watcher, state, data_state, teacher_params
        )
    ckpt.wait()
    ckpt.close()
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
) -> TrainState:
    """Steps to config.training.num_steps or to an agreed preemption step, saving on the way."""
    from clu import parameter_overview, periodic_actions

    from mcm_jax import input_pipeline

    t = config.training
    step = int(state.step)
    is_chief = multihost.is_chief()
    writer = multihost.metric_writer(workdir, asynchronous=True)
    if step == 0 and is_chief:
        parameter_overview.log_parameter_overview(state.params)
        writer.write_hparams(
            {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )
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
    buffer: list[dict] = []
    last_time, last_step = time.time(), step

    def check_finite(state):
        bad = int(state.nonfinite_step)
        if bad >= 0:
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad}; training stopped. "
                + ckpt.last_good_message()
            )

    while step < t.num_steps:
        batch = sharding.host_local_to_global(next(data), trainer.mesh)
        state, metrics = trainer.train_step(state, batch, teacher_params)
        step += 1
        profiler.after_step(step, metrics)
        if not buffer and step == last_step + 1:
            # Time from the end of the first step on, so compilation is not counted as speed.
            jax.block_until_ready(metrics)
            last_time, last_step = time.time(), step
        buffer.append(metrics)
        report(step)
        if step % t.log_every == 0 or step == t.num_steps:
            check_finite(state)
            scalars = _mean_metrics(buffer)
            buffer = []
            now = time.time()
            steps_per_sec = (step - last_step) / (now - last_time)
            last_time, last_step = now, step
            tflops = flops_per_step * steps_per_sec / jax.device_count() / 1e12
            scalars.update(
                steps_per_sec=steps_per_sec,
                examples_per_sec=steps_per_sec * t.batch_size,
                tflops_per_device=tflops,
            )
            if peak_tflops:  # None for a device mcm_jax.hardware does not know
                scalars["mfu"] = tflops / peak_tflops
            writer.write_scalars(step, scalars)
        preempted = watcher.reached(step)
        if step % t.checkpoint_every == 0 or step == t.num_steps or preempted:
            check_finite(state)
            ckpt.save(step, state, data.get_state())
        if t.sample_every and step % t.sample_every == 0:
            grid = trainer.sample(state.ema_params[0], t.sample_images, jax.random.PRNGKey(step))
            if is_chief:
                images.write_grid(workdir, f"samples_{step:08d}", grid, writer, step)
        if preempted:
            break
    profiler.stop()
    ckpt.wait()
    writer.flush()
    return state
