"""The jitted sampler of a run over its mesh: a batch of samples from noise that is a function of
(seed, sample index) alone, so any job (training's sample grids, the eval job, `mcm_jax.load`)
draws the same sample i from the same parameters, on any number of devices."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mcm_jax.method import losses, samplers
from mcm_jax.method.schedules import Schedule
from mcm_jax.run import sharding


@dataclasses.dataclass(frozen=True)
class SamplerSetting:
    """One sampler configuration of a sweep."""

    method: str  # "ddim" | "addim"
    steps: int
    guidance_weight: float = 0.0

    @property
    def name(self) -> str:
        guidance = f"_guidance{self.guidance_weight:g}" if self.guidance_weight else ""
        return f"{self.method}_{self.steps}steps{guidance}"


def sample_labels(indices: np.ndarray | jax.Array, num_classes: int) -> np.ndarray | jax.Array:
    """The label of sample i: i mod num_classes (balanced classes), or 0 (null) if unconditional."""
    return indices % num_classes if num_classes else indices * 0


def make_batch_sampler(
    model_fn: losses.ModelFn,
    schedule: Schedule,
    mesh: Mesh,
    param_shardings: Any,
    *,
    setting: SamplerSetting,
    image_shape: tuple[int, int, int],
    num_classes: int,
    null_label: int,
    seed: int,
    batch_size: int,
    x_var_fn: samplers.XVarFn | None = None,
    text: bool = False,
    labels: bool = False,
) -> Callable[..., jax.Array]:
    """A jitted `sample_batch(params, first_index)`: [-1, 1] images of samples first_index + 0..B-1;
    for a text model (text=True) `sample_batch(params, first_index, prompts)` with prompts
    {"text": (B, length, width), "text_mask": (B, length)}, the prompts of those samples. With
    labels=True the caller gives the class labels too: `sample_batch(params, first_index,
    prompts_or_None, labels)`, labels int32 (B,); otherwise sample i has label `sample_labels`.

    The noise of sample i is normal(fold_in(PRNGKey(seed), i)); the batch is split over every
    device of the mesh (NamedSharding over its batch axes).
    """
    batch_sharding = sharding.batch_sharding(mesh)
    key = jax.random.PRNGKey(seed)

    def sample_batch(params, first_index, prompts=None, given_labels=None):
        indices = first_index + jnp.arange(batch_size, dtype=jnp.int32)
        indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), image_shape))
        labels = sample_labels(indices, num_classes) if given_labels is None else given_labels
        cond = labels if prompts is None else {"label": labels, **prompts}
        model = lambda z, t, cond: model_fn(params, z, t, cond, False, None)
        denoise = samplers.classifier_free_guidance(
            model, cond, null_label, setting.guidance_weight
        )
        return samplers.sample(
            denoise, noise(indices), schedule=schedule, steps=setting.steps,
            method=setting.method, x_var_fn=x_var_fn if setting.method == "addim" else None,
        )

    in_shardings = (param_shardings, sharding.replicated(mesh))
    if text or labels:
        in_shardings += ({"text": batch_sharding, "text_mask": batch_sharding} if text else None,)
    if labels:
        in_shardings += (batch_sharding,)
    return jax.jit(sample_batch, in_shardings=in_shardings, out_shardings=batch_sharding)
