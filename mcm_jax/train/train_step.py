"""The train state, optimizer, loss dispatch and the pure train step, and the FLOPs of a step.

`make_train_step` builds a pure function (state, batch, teacher_params) -> (state, metrics);
`mcm_jax.train.train.Trainer` jits it with NamedShardings over the mesh and a donated state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mcm_jax.config import config_lib, data_config
from mcm_jax.method import losses
from mcm_jax.models import flops_per_example

Params = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `nonfinite_step` is the first step whose loss or gradient was not
    finite (-1 if none); such a step leaves parameters and optimizer state untouched. `teacher`:
    progressive distillation's teacher of the current round (a frozen copy of parameters,
    checkpointed with the rest), None for every other objective."""

    step: jax.Array
    params: Params
    opt_state: Any
    ema_params: tuple[Params, ...]
    nonfinite_step: jax.Array
    teacher: Params = None


def is_progressive_distillation(config: ml_collections.ConfigDict) -> bool:
    return config.objective == "mcm" and config.mcm.method == "pd"


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to the learning rate, then constant (optax.linear_schedule holds its end
    value) or cosine decay to 0 at num_steps. Progressive distillation starts each round with a
    fresh optimizer, so the schedule runs per round (the cosine over mcm.pd_round_steps)."""
    o = config.optimizer
    warmup = max(o.warmup_steps, 1)
    if o.decay == "cosine":
        horizon = (
            config.mcm.pd_round_steps if is_progressive_distillation(config)
            else config.training.num_steps
        )
        return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, horizon)
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
    params: Params, optimizer: optax.GradientTransformation, num_ema: int,
    with_teacher: bool = False,
) -> TrainState:
    """Step 0 from `params`; `with_teacher` (progressive distillation) keeps a copy of them as
    the first round's teacher (a student starts from its diffusion teacher's weights)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=tuple(params for _ in range(num_ema)),
        nonfinite_step=jnp.full((), -1, jnp.int32),
        teacher=params if with_teacher else None,
    )


def start_next_pd_round(state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """Progressive distillation between rounds (Algorithm 2: the student becomes the teacher and
    the next student starts from it): the first EMA of the round that ended becomes the frozen
    teacher and the new student's parameters, EMAs restart from them, the optimizer restarts."""
    start = state.ema_params[0]
    return state.replace(
        params=start, teacher=start, opt_state=optimizer.init(start),
        ema_params=tuple(start for _ in state.ema_params),
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
    if loss_config.method == "pd":
        # The teacher is the state's (`TrainState.teacher`): the student's own network.
        def loss_fn(params, batch, rng, step, teacher_params):
            return losses.pd_loss(
                params, batch, rng, step, model_fn=model_fn, schedule=schedule, config=loss_config,
                teacher=losses.Teacher(model_fn=model_fn, params=teacher_params),
            )

        return loss_fn

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
    pd = is_progressive_distillation(config)
    if pd:
        pd_config = config_lib.consistency_loss_config(config)
        rounds = losses.pd_rounds(pd_config.pd_start_steps, pd_config.student_steps)
        round_steps = pd_config.pd_round_steps

    def train_step(state: TrainState, batch: dict, teacher_params: Params | None):
        """`teacher_params`: the diffusion teacher's for CD; progressive distillation takes its
        teacher from the state (None here), and starts the next round on its first step."""
        lr_step = state.step
        if pd:
            state = jax.lax.cond(
                losses.pd_starts_round(state.step, round_steps, rounds),
                lambda s: start_next_pd_round(s, optimizer), lambda s: s, state,
            )
            teacher_params = state.teacher
            lr_step = state.step - losses.pd_round(state.step, round_steps, rounds) * round_steps
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
            teacher=state.teacher,
        )
        metrics = dict(metrics, grad_norm=grad_norm, learning_rate=lr_schedule(lr_step))
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
    guided = 2.0 if config.mcm.guidance_weight > 0 else 1.0
    if is_progressive_distillation(config):
        multiplier += 2.0 * guided  # two teacher DDIM steps (guided in the first round only)
    elif config.objective == "mcm":
        multiplier += 1.0
        if config.mcm.method == "cd":
            multiplier += guided
    return multiplier * forward
