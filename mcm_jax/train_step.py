"""The train state, optimizer, loss dispatch and the pure train step, and the FLOPs of a step.

`make_train_step` builds a pure function (state, batch, teacher_params) -> (state, metrics);
`mcm_jax.train.Trainer` jits it with NamedShardings over the mesh and a donated state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mcm_jax import config_lib, data_config, losses
from mcm_jax.models import flops_per_example

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
    """Linear warm-up to the learning rate, then constant (optax.linear_schedule holds its end
    value) or cosine decay to 0 at num_steps."""
    o = config.optimizer
    warmup = max(o.warmup_steps, 1)
    if o.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, o.learning_rate, warmup, config.training.num_steps
        )
    return optax.linear_schedule(0.0, o.learning_rate, warmup)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam(W) with warm-up and global-norm gradient clipping (0 disables clipping)."""
    o = config.optimizer
    adam = optax.adamw(
        learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay
    )
    if o.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adam)
    return adam


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


def diffusion_loss_config(config: ml_collections.ConfigDict) -> losses.DiffusionLossConfig:
    """The teacher's loss: `config.diffusion`'s fields as they are, plus the data's null label;
    errors name the field."""
    try:
        return losses.DiffusionLossConfig(**config.diffusion, null_label=config_lib.null_label(config))
    except ValueError as e:
        raise ValueError(f"config.diffusion: {e}") from None


def consistency_loss_config(config: ml_collections.ConfigDict) -> losses.ConsistencyLossConfig:
    """The student's loss: `config.mcm`'s fields as they are, plus the data's null label; errors
    name the field."""
    try:
        return losses.ConsistencyLossConfig(**config.mcm, null_label=config_lib.null_label(config))
    except ValueError as e:
        raise ValueError(f"config.mcm: {e}") from None


def make_loss_fn(
    config: ml_collections.ConfigDict, model_fn: losses.ModelFn, teacher_model_fn: losses.ModelFn | None
) -> Callable:
    """loss_fn(params, batch, rng, step, teacher_params) -> (loss, metrics) for the objective."""
    schedule = config_lib.schedule_from_config(config)
    if config.objective == "diffusion":
        loss_config = diffusion_loss_config(config)

        def loss_fn(params, batch, rng, step, teacher_params):
            del step, teacher_params
            return losses.diffusion_loss(
                params, batch, rng, model_fn=model_fn, schedule=schedule, config=loss_config
            )

        return loss_fn

    loss_config = consistency_loss_config(config)

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
            optax.incremental_update(params, ema, step_size=1.0 - d)
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
    _, _, channels = data_config.image_shape(config.data)
    forward = flops_per_example(
        config.model, config.data.resolution, channels=channels,
        text=data_config.text_shape(config.data),
    )
    multiplier = 3.0
    if config.objective == "mcm":
        multiplier += 1.0
        if config.mcm.method == "cd":
            multiplier += 2.0 if config.mcm.guidance_weight > 0 else 1.0
    return multiplier * forward
