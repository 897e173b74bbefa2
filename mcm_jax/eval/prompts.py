"""The prompts a text-to-image model is sampled with: a split of an embedded caption data set
(docs/data.md), read in file order by every process.

Sample i takes prompt i mod count (as class-conditional sampling cycles through the classes), so
N samples of a 30k-prompt set are the first N prompts. The captions are held in memory (for the
CLIP score and sample pictures); the embeddings are streamed, batch after batch, from any start.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mcm_jax.run import sharding


def eval_prompts(config: ml_collections.ConfigDict) -> PromptSet:
    """The prompt set of config.eval: split eval.prompts_split ("": data.eval_split) of the
    data in eval.prompts_dir ("": data.data_dir); errors name the field that was set."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    dir_field, split_field = "data.data_dir", "data.eval_split"
    if config.eval.prompts_dir:
        data.data_dir, dir_field = config.eval.prompts_dir, "eval.prompts_dir"
    if config.eval.prompts_split:
        data.eval_split, split_field = config.eval.prompts_split, "eval.prompts_split"
    return PromptSet(data, dir_field=dir_field, split_field=split_field)


class PromptSet:
    """The prompts of `data.eval_split` of the caption data in `data.data_dir` (errors name them
    as `dir_field` and `split_field`, the config fields they came from)."""

    def __init__(
        self, data: ml_collections.ConfigDict, *, dir_field: str = "data.data_dir",
        split_field: str = "data.eval_split",
    ):
        from mcm_jax.data import captions  # TensorFlow: the input side only

        self._data = data
        self._builder = captions.open_builder(data, dir_field)
        captions.check_split(self._builder, data, data.eval_split, f"{split_field} (the prompts)",
                             images=False, dir_field=dir_field)
        records = self._records(with_captions=True).map(lambda r: r["caption"])
        self.captions = np.array([c.decode() for c in records.as_numpy_iterator()], dtype=object)
        if not len(self.captions):
            raise ValueError(f"{split_field}={data.eval_split!r} (the prompts) is empty")

    def _records(self, *, with_captions: bool):
        from mcm_jax.config.data_config import dataset_spec
        from mcm_jax.data import records

        return records.read(
            self._builder, self._data.eval_split, shuffle_seed=None,
            spec=dataset_spec("captions"), images=False, with_captions=with_captions,
            autotune=self._data.autotune,
        )

    def __len__(self) -> int:
        return len(self.captions)

    def batches(self, batch_size: int, first_index: int) -> Iterator[dict[str, np.ndarray]]:
        """{"text": float16 (B, length, width), "text_mask": bool (B, length)} of samples
        first_index + kB + 0..B-1, k = 0, 1, ...: prompts (i mod count)."""
        from mcm_jax.data import captions

        ds = self._records(with_captions=False).map(
            lambda r: captions.decode_text(r, self._data, captions=False)
        )
        ds = ds.map(lambda e: {"text": e["text"], "text_mask": e["text_mask"]})
        ds = ds.repeat().skip(first_index % len(self)).batch(batch_size).prefetch(2)
        return ds.as_numpy_iterator()

    def captions_of(self, indices: np.ndarray) -> np.ndarray:
        """The captions of samples `indices`."""
        return self.captions[np.asarray(indices) % len(self)]


class PromptFeed:
    """The prompts of consecutive sampler batches as global arrays over the mesh: every process
    reads the same prompts and hands the devices their slices."""

    def __init__(self, prompts: PromptSet, batch_size: int, mesh: Mesh):
        self._prompts, self._batch_size = prompts, batch_size
        self._sharding = sharding.batch_sharding(mesh)
        self._next_index: int | None = None
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def __call__(self, first_index: int) -> dict[str, jax.Array]:
        """The prompts of samples first_index + 0..B-1; consecutive calls stream."""
        if first_index != self._next_index:
            self._batches = self._prompts.batches(self._batch_size, first_index)
        batch = next(self._batches)
        self._next_index = first_index + self._batch_size
        return {
            key: jax.make_array_from_callback(value.shape, self._sharding, lambda i, v=value: v[i])
            for key, value in batch.items()
        }
