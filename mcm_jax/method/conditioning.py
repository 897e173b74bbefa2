"""What the network is conditioned on besides (z_t, t): a class label and, for text-to-image, a
prompt (a text encoder's token embeddings and their padding mask).

A condition is either a label array (batch,) (class-conditional or unconditional models) or a dict
{"label": (batch,), "text": (batch, length, width), "text_mask": (batch, length) bool} (text
models, see models.UViT). Every leaf has the batch as its first axis, so batches of conditions are
concatenated and split like the images they go with. The null condition, for classifier-free
guidance and for condition dropout in training, is the null label and, for text, the empty
prompt: an all-False text_mask.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
Condition = Any  # Array | dict[str, Array]; see the module docstring

KEYS = ("label", "text", "text_mask")


def from_batch(batch: Mapping[str, Array]) -> Condition:
    """The condition of a data batch: its label, plus text and text_mask when the batch has them."""
    if "text" not in batch:
        return batch["label"]
    return {key: batch[key] for key in KEYS}


def model_kwargs(cond: Condition) -> tuple[Array, dict[str, Array]]:
    """(label, {text, text_mask} or {}): how a network's apply function takes a condition."""
    if isinstance(cond, Mapping):
        return cond["label"], {"text": cond["text"], "text_mask": cond["text_mask"]}
    return cond, {}


def null(cond: Condition, null_label: int) -> Condition:
    """The null condition of the same shapes: the null label and the empty prompt."""
    if isinstance(cond, Mapping):
        return {
            "label": jnp.full_like(cond["label"], null_label),
            "text": cond["text"],  # ignored under an all-False mask
            "text_mask": jnp.zeros_like(cond["text_mask"]),
        }
    return jnp.full_like(cond, null_label)


def _where(keep: Array, cond: Condition, other: Condition) -> Condition:
    """Per example, `cond` where keep (batch,) is True, else `other`."""
    return jax.tree.map(
        lambda a, b: jnp.where(keep.reshape(keep.shape + (1,) * (a.ndim - 1)), a, b), cond, other
    )


def drop(rng: Array, cond: Condition, rate: float, null_label: int) -> Condition:
    """Replaces each example's condition (label and prompt together) by the null condition with
    probability `rate`: training for classifier-free guidance."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"condition dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return cond
    batch = jax.tree.leaves(cond)[0].shape[0]
    dropped = jax.random.bernoulli(rng, rate, (batch,))
    return _where(~dropped, cond, null(cond, null_label))


def with_null(cond: Condition, null_label: int) -> Condition:
    """The conditions followed by their null conditions: one double batch for guidance."""
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, null(cond, null_label))
