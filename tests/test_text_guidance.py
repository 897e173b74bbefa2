"""Conditions with prompts in the losses and samplers: prompt dropout, the null prompt under
classifier-free guidance, and x_var from the teacher's conditional output (paper §5.2, A.1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.method import conditioning, diffusion, losses, samplers
from mcm_jax.method.schedules import get_schedule
from test_text_conditioning import TEXT_WIDTH, text_inputs, text_model, text_params

SCHEDULE = get_schedule("cosine")
NULL = 7


def _text_cond(batch: int, seed: int = 1) -> dict:
    text, mask = text_inputs(batch, seed=seed)
    return {"label": jnp.arange(batch, dtype=jnp.int32) % 3, "text": text, "text_mask": mask}


def test_null_condition_is_the_null_label_and_the_empty_prompt():
    cond = _text_cond(4)
    null = conditioning.null(cond, NULL)
    np.testing.assert_array_equal(null["label"], [NULL] * 4)
    assert not np.any(null["text_mask"]) and null["text_mask"].shape == cond["text_mask"].shape
    both = conditioning.with_null(cond, NULL)
    np.testing.assert_array_equal(both["text_mask"][:4], cond["text_mask"])
    assert not np.any(both["text_mask"][4:])
    np.testing.assert_array_equal(conditioning.null(jnp.array([1, 2]), NULL), [NULL, NULL])


def test_dropout_drops_label_and_prompt_together_per_example():
    cond = _text_cond(512)
    cond["text_mask"] = cond["text_mask"].at[:, 0].set(True)  # every prompt has a token
    dropped = conditioning.drop(jax.random.PRNGKey(0), cond, 0.25, NULL)
    label_gone = np.asarray(dropped["label"]) == NULL
    prompt_gone = ~np.asarray(dropped["text_mask"]).any(axis=1)
    np.testing.assert_array_equal(label_gone, prompt_gone)
    assert 0.15 < label_gone.mean() < 0.35
    kept = ~label_gone
    np.testing.assert_array_equal(dropped["text_mask"][kept], cond["text_mask"][kept])
    np.testing.assert_array_equal(dropped["text"], cond["text"])
    assert conditioning.drop(jax.random.PRNGKey(0), cond, 0.0, NULL) is cond
    with pytest.raises(ValueError, match="rate must be in"):
        conditioning.drop(jax.random.PRNGKey(0), cond, 1.0, NULL)


@pytest.mark.slow
def test_diffusion_loss_drops_prompts_at_the_label_dropout_rate():
    """The teacher's loss on a text batch is the loss at the conditions `conditioning.drop` gives."""
    model = text_model()
    params = text_params(model)["params"]
    model_fn = losses.make_model_fn(model.apply, SCHEDULE)
    cond = _text_cond(4)
    batch = {"image": jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 3)), **cond}
    config = losses.DiffusionLossConfig(label_dropout=0.5, null_label=model.num_classes)
    rng = jax.random.PRNGKey(5)
    loss, _ = losses.diffusion_loss(
        params, batch, rng, model_fn=model_fn, schedule=SCHEDULE, config=config
    )
    rng_t, rng_eps, rng_label, rng_dropout = jax.random.split(rng, 4)
    t = jax.random.uniform(rng_t, (4,))
    eps = jax.random.normal(rng_eps, batch["image"].shape)
    dropped = conditioning.drop(rng_label, cond, 0.5, model.num_classes)
    assert not np.array_equal(dropped["text_mask"], cond["text_mask"])  # some prompts dropped
    expected = losses.diffusion_loss_at(
        params, model_fn, batch["image"], dropped, eps, t, rng_dropout,
        schedule=SCHEDULE, config=config,
    )
    np.testing.assert_allclose(loss, jnp.mean(expected), rtol=1e-6)


@functools.lru_cache(maxsize=None)
def _teacher():
    model = text_model()
    return model, losses.Teacher(losses.make_model_fn(model.apply, SCHEDULE), text_params(model)["params"])


@pytest.mark.slow
def test_guided_teacher_uses_the_empty_prompt_as_its_unconditional_half():
    model, teacher = _teacher()
    cond = _text_cond(4)
    z = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))
    t = jnp.full((4,), 0.6)
    config = losses.ConsistencyLossConfig(guidance_weight=3.0, null_label=model.num_classes)
    x_teacher, x_cond = losses.teacher_denoise(teacher, z, t, cond, config)
    x_uncond = teacher.model_fn(teacher.params, z, t, conditioning.null(cond, model.num_classes),
                                False, None)
    np.testing.assert_allclose(
        x_cond, teacher.model_fn(teacher.params, z, t, cond, False, None), atol=1e-5
    )
    np.testing.assert_allclose(x_teacher, x_cond + 3.0 * (x_cond - x_uncond), atol=1e-4)
    assert np.max(np.abs(x_cond - x_uncond)) > 1e-3  # the prompt matters

    guided = samplers.classifier_free_guidance(
        lambda z, t, c: teacher.model_fn(teacher.params, z, t, c, False, None),
        cond, model.num_classes, 3.0,
    )
    np.testing.assert_allclose(guided(z, t), x_teacher, atol=1e-4)


@pytest.mark.slow
def test_x_var_under_guidance_comes_from_the_conditional_output():
    """aDDIM's x_var in CD is xvar_frac·‖x_cond − x‖²/d, not that of the guided prediction."""
    model, teacher = _teacher()
    cond = _text_cond(4)
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 16, 16, 3))
    eps = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    times = losses.sample_times(jax.random.PRNGKey(7), 4, 2, 64.0)
    config = losses.ConsistencyLossConfig(
        student_steps=2, guidance_weight=3.0, null_label=model.num_classes, huber_c=1.0
    )
    student, dropout = teacher.model_fn, jax.random.PRNGKey(9)
    loss = losses.consistency_loss_at(
        teacher.params, student, x, cond, eps, times, dropout,
        schedule=SCHEDULE, config=config, teacher=teacher,
    )

    def loss_with(x_var_of):
        t_step, t, s = times
        z_t = losses.noisy(x, eps, t, SCHEDULE)
        x_teacher, x_cond = losses.teacher_denoise(teacher, z_t, t, cond, config)
        x_var = diffusion.distillation_x_var(x_var_of(x_teacher, x_cond), x, config.xvar_frac)
        z_s = diffusion.addim_step(
            x_teacher, z_t, *SCHEDULE.alpha_sigma(t), *SCHEDULE.alpha_sigma(s), x_var
        )
        x_hat = student(teacher.params, z_t, t, cond, True, dropout)
        x_ref = student(teacher.params, z_s, s, cond, True, dropout)
        target = losses.consistency_target(x_ref, z_s, z_t, t, s, t_step, SCHEDULE)
        return losses.weighted_loss(
            x_hat, target, SCHEDULE.alpha_sigma(t)[1],
            weighting="v", kind="pseudo_huber", huber_c=1.0, pools=0,
        )

    from_cond = loss_with(lambda guided, conditional: conditional)
    from_guided = loss_with(lambda guided, conditional: guided)
    np.testing.assert_allclose(loss, from_cond, rtol=1e-5)
    assert np.max(np.abs(from_cond - from_guided) / from_cond) > 1e-4  # the choice shows


@pytest.mark.slow
def test_padding_values_change_no_loss():
    """Embeddings at padded positions reach neither the teacher, the student nor the loss."""
    model, teacher = _teacher()
    cond = _text_cond(4)
    noisy_padding = dict(cond, text=jnp.where(
        cond["text_mask"][..., None], cond["text"], 100.0 * jnp.ones_like(cond["text"])
    ))
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 16, 16, 3))
    eps = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    times = losses.sample_times(jax.random.PRNGKey(7), 4, 2, 64.0)
    config = losses.ConsistencyLossConfig(
        student_steps=2, guidance_weight=0.5, null_label=model.num_classes
    )
    run = lambda c: losses.consistency_loss_at(
        teacher.params, teacher.model_fn, x, c, eps, times, jax.random.PRNGKey(9),
        schedule=SCHEDULE, config=config, teacher=teacher,
    )
    np.testing.assert_allclose(run(cond), run(noisy_padding), rtol=1e-5, atol=1e-6)
    assert TEXT_WIDTH == cond["text"].shape[-1]
