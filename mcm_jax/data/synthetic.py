"""Synthetic training batches of a data set's shapes and classes, for a runlocal smoke test whose
data is not prepared (mcm_jax.runlocal; a run without runlocal never uses them).

Batch k of process p is a pure function of (seed, examples seen before it, p), so the stream
resumes exactly from the position a checkpoint saves, as the real pipeline's does. Images are
smooth random colour fields in [-1, 1] (sums of a few random plane waves), which a network can
learn from, unlike white noise; labels are uniform over the data set's classes.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from mcm_jax.config.data_config import image_shape, num_classes

WAVES = 4  # plane waves per channel


def synthetic_images(
    rng: np.random.Generator, count: int, shape: tuple[int, int, int]
) -> np.ndarray:
    """`count` smooth random images of `shape` (H, W, C), float32 in [-1, 1]."""
    height, width, channels = shape
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    freq = rng.uniform(0.5, 4.0, (count, 1, 1, channels, WAVES, 2)) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1, channels, WAVES))
    grid = np.stack([y, x], -1)[None, :, :, None, None, :]
    waves = np.cos(np.sum(freq * grid, -1) + phase).mean(-1)
    return np.clip(waves * 2, -1, 1).astype(np.float32)


class SyntheticTrainIterator:
    """The interface of input_pipeline.TrainIterator (iteration, `get_state`) over synthetic
    batches: {"image": (local_batch, H, W, C) float32, "label": (local_batch,) int32}."""

    def __init__(
        self, data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
        state: dict | None, process_index: int, process_count: int,
    ):
        self._shape = image_shape(data_config)
        self._classes = num_classes(data_config)
        self._seed, self._process_index, self._process_count = seed, process_index, process_count
        self._global_batch_size = global_batch_size
        self._local_batch_size = global_batch_size // process_count
        if state is not None and state["seed"] != seed:
            raise ValueError(
                f"data state seed={state['seed']} differs from this run's seed={seed}: the data "
                "position belongs to another run."
            )
        self._examples_seen = 0 if state is None else int(state["examples_seen"])

    def __iter__(self) -> SyntheticTrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, self._examples_seen, self._process_index])
        batch = {
            "image": synthetic_images(rng, self._local_batch_size, self._shape),
            "label": rng.integers(0, max(self._classes, 1), self._local_batch_size, np.int32),
        }
        self._examples_seen += self._global_batch_size
        return batch

    def get_state(self) -> dict:
        """The position, in the real pipeline's layout (one endless epoch)."""
        return {
            "seed": self._seed, "process_count": self._process_count, "epoch": 0,
            "examples_in_epoch": self._examples_seen // self._process_count,
            "examples_seen": self._examples_seen, "synthetic": True,
        }
