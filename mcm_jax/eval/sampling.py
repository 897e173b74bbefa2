"""Exactly N samples, sharded over all devices and processes, written as resumable npz chunks.

Chunk k holds samples [k·B, min((k+1)·B, N)) for the global batch B: one jitted sampler call over
the mesh, whose last call is padded and the padding dropped before writing. The noise and label
of sample i are functions of (seed, i) alone, so a job killed at any moment and restarted skips
the chunks on disk and ends with the same images as an uninterrupted one. Process 0 writes; every
process computes (the workdir is shared, as for checkpoints).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mcm_jax import files, images
from mcm_jax.eval import report
from mcm_jax.progress import duration, ProgressFn
from mcm_jax.run.batch_sampler import sample_labels

CHUNK_PATTERN = "chunk_{:06d}.npz"
SPEC_FILE = "spec.json"


def num_chunks(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)


def check_or_write_spec(directory: epath.Path, spec: dict) -> None:
    """Records what the chunks in `directory` are samples of; refuses to mix different ones."""
    path = directory / SPEC_FILE
    if path.exists():
        found = json.loads(path.read_text())
        changed = {k: (found.get(k), v) for k, v in spec.items() if found.get(k) != v}
        if changed:
            raise ValueError(
                f"{directory} holds samples of different settings (found, now): {changed}. "
                "Delete the directory or set config.eval.name to evaluate into another one."
            )
        return
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        report.write_json(path, spec)


def completed_chunks(directory: epath.Path, total_chunks: int) -> list[int]:
    """Indices of the chunks on disk, as process 0 sees them (so every process agrees)."""
    done = np.zeros(total_chunks, np.int32)
    for k in range(total_chunks):
        done[k] = (directory / CHUNK_PATTERN.format(k)).exists()
    if jax.process_count() > 1:
        done = multihost_utils.broadcast_one_to_all(done)
    return [int(k) for k in np.flatnonzero(done)]


def _write_chunk(path: epath.Path, samples: np.ndarray, labels: np.ndarray,
                 captions: np.ndarray | None) -> None:
    extra = {} if captions is None else {"captions": captions.astype(str)}
    files.save_npz(path, images=samples, labels=labels, **extra)  # atomic: no half chunk


def generate_samples(
    sample_batch: Callable[[int], jax.Array],
    directory: epath.Path,
    *,
    num_samples: int,
    batch_size: int,
    num_classes: int,
    max_chunks: int | None = None,
    progress: ProgressFn = lambda done, total: None,
    captions: Callable[[np.ndarray], np.ndarray] | None = None,
) -> bool:
    """Writes the chunks of `directory` that are missing; True when all are there.

    `sample_batch(first_index)` returns the global batch of [-1, 1] images starting at that
    sample index; `captions(indices)`, for text models, the prompts' captions, kept in the chunks. `max_chunks` bounds the chunks made by this call (a time slice of the job).
    `progress(chunks_on_disk, total_chunks)` is called after each chunk.
    """
    total = num_chunks(num_samples, batch_size)
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    done = completed_chunks(directory, total)
    todo = sorted(set(range(total)) - set(done))
    if done:
        logging.info("%s: %d of %d chunks already on disk", directory, len(done), total)
    if max_chunks is not None:
        todo = todo[:max_chunks]
    start = time.time()
    for count, k in enumerate(todo, 1):
        first = k * batch_size
        batch = multihost_utils.process_allgather(sample_batch(first), tiled=True)
        real = min(batch_size, num_samples - first)
        if jax.process_index() == 0:
            indices = np.arange(first, first + real)
            _write_chunk(
                directory / CHUNK_PATTERN.format(k),
                images.to_uint8(np.asarray(batch)[:real]),
                np.asarray(sample_labels(indices, num_classes), np.int32),
                None if captions is None else captions(indices),
            )
        progress(len(done) + count, total)
        elapsed = time.time() - start
        remaining = total - len(done) - count
        logging.info(
            "%s: chunk %d/%d, %d/%d images, %.1f images/s, ETA %s",
            directory.name, len(done) + count, total, min(num_samples, (k + 1) * batch_size),
            num_samples, count * batch_size / elapsed, duration(elapsed / count * remaining),
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"chunks_written:{directory}")
    return len(done) + len(todo) == total


def iterate_chunks(
    directory: epath.Path, *, num_samples: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(images uint8 (B, H, W, C), labels (B,), mask (B,), captions (B,) or None) per chunk, in
    sample order; the last chunk is padded with zero images (and empty captions) to the fixed
    batch B and `mask` marks the real samples."""
    for k in range(num_chunks(num_samples, batch_size)):
        with files.open_npz(directory / CHUNK_PATTERN.format(k)) as chunk:
            samples, labels = chunk["images"], chunk["labels"]
            captions = chunk["captions"] if "captions" in chunk.files else None
        expected = min(batch_size, num_samples - k * batch_size)
        if len(samples) != expected:
            raise ValueError(
                f"{directory}: chunk {k} has {len(samples)} samples, expected {expected}"
            )
        mask = np.arange(batch_size) < expected
        pad = batch_size - expected
        yield (
            np.pad(samples, ((0, pad),) + ((0, 0),) * (samples.ndim - 1)),
            np.pad(labels, (0, pad)),
            mask,
            None if captions is None else np.concatenate([captions, [""] * pad]),
        )


def remove_chunks(directory: epath.Path, total_chunks: int) -> None:
    """Deletes the chunks once their metrics (and, if asked for, samples.npz) are written."""
    if jax.process_count() > 1:  # nobody may still be reading them
        multihost_utils.sync_global_devices(f"chunks_read:{directory}")
    if jax.process_index() == 0:
        for k in range(total_chunks):
            (directory / CHUNK_PATTERN.format(k)).unlink(missing_ok=True)
