"""Captions with their T5 embeddings (and images), written as a TFDS data set directory.

Text-to-image training (paper §5.2) reads the frozen encoder's outputs instead of running it.
`write_embedded_captions` encodes captions in batches and streams them into a directory that
`tfds.builder_from_directory(out_dir)` reads; each split is sharded (`examples_per_shard`) so many
hosts read in parallel. Features of each example:

    "image":   tfds.features.Image(shape=(None, None, 3)): the JPEG/PNG/GIF/BMP bytes as given
               (other formats PIL reads are stored as PNG); absent in prompt-only data sets.
    "caption": tfds.features.Text()
    "text":    tfds.features.Tensor(shape=(None, width), dtype=float16, encoding=BYTES): only the
               n real tokens, 1 <= n <= max_length (EOS included), 2 bytes per value on disk.
    "id":      tfds.features.Text(): where the example came from (path, tar key, COCO image id).

The data set's metadata (`builder.info.metadata`, metadata.json) holds `encoder_dir`,
`max_length` and `width`, and `incomplete_splits`: splits whose writing was interrupted (readers
must refuse them). Splits can be added to an existing directory written with the same encoder.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
from absl import logging
from etils import epath

from mcm_jax.text.text_encoder import TextEncoder

NAME = "embedded_captions"
VERSION = "1.0.0"
STORED_AS_IS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
LOG_EVERY_S = 30.0


class OutDirError(ValueError):
    """The output directory holds a data set the new split does not fit."""


class Example(NamedTuple):
    """One caption, with its encoded image (None in prompt-only sets) and an optional id."""

    image: bytes | None
    caption: str
    id: str = ""


def features(width: int, *, with_images: bool):
    """The data set's tfds FeaturesDict for embeddings `width` wide."""
    import tensorflow_datasets as tfds

    spec = {
        "caption": tfds.features.Text(),
        "text": tfds.features.Tensor(
            shape=(None, width), dtype=np.float16, encoding=tfds.features.Encoding.BYTES
        ),
        "id": tfds.features.Text(),
    }
    if with_images:
        spec["image"] = tfds.features.Image(shape=(None, None, 3))
    return tfds.features.FeaturesDict(spec)


def storable_image(data: bytes, name: str) -> bytes:
    """`data` unchanged if TensorFlow decodes it (JPEG, PNG, GIF, BMP), else re-encoded as PNG
    (lossless) if PIL reads it; ValueError naming `name` if neither."""
    if data.startswith(STORED_AS_IS):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name}: not an image PIL can read ({error})") from error
    return out.getvalue()


def read_metadata(out_dir: epath.PathLike) -> dict | None:
    """The metadata of the embedded caption set in `out_dir` (None if there is no data set);
    OutDirError if `out_dir` is a file or holds another TFDS data set."""
    import tensorflow_datasets as tfds

    path = epath.Path(out_dir)
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{out_dir} is a file, not a directory")
    if not (path / "dataset_info.json").exists():
        return None
    builder = tfds.builder_from_directory(os.fspath(out_dir))
    if builder.info.name != NAME:
        raise OutDirError(
            f"{out_dir} holds the TFDS data set {builder.info.name!r}, not embedded captions; "
            "write to another directory"
        )
    return {
        **dict(builder.info.metadata or {}),
        "splits": sorted(builder.info.splits.keys()),
        "with_images": "image" in builder.info.features,
    }


def check_compatible(out_dir: epath.PathLike, existing: dict, wanted: dict, split: str) -> None:
    """OutDirError unless split `split` can be added to the data set in `out_dir`, whose
    `read_metadata` is `existing`, by a run with `wanted` (a subset of encoder_dir, max_length,
    width, with_images)."""
    if split in existing.get("incomplete_splits", []):
        raise OutDirError(
            f"{out_dir}: writing split {split!r} was interrupted; delete the directory and write "
            "its splits again, or write this split to another directory"
        )
    if split in existing["splits"]:
        raise OutDirError(
            f"{out_dir} already has split {split!r}; choose another split or directory"
        )
    for key, value in wanted.items():
        if existing.get(key) != value:
            raise OutDirError(
                f"{out_dir} holds a data set with {key}={existing.get(key)!r}, not {value!r}; "
                "write to another directory"
            )


def _batches(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
    batch = []
    for example in examples:
        batch.append(example)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_embedded_captions(
    out_dir: epath.PathLike,
    split: str,
    examples: Iterable[Example | tuple],
    encoder: TextEncoder,
    *,
    examples_per_shard: int = 1000,
) -> int:
    """Encodes the captions of `examples` and writes them (with their images) as split `split`
    of the TFDS data set in `out_dir` (local or gs://; created, or extended by a new split).
    Returns the number of examples. Every example must have an image, or none may.

    Tuples (image, caption) or (image, caption, id) are accepted; an empty id becomes the
    example's position in the split.
    """
    import tensorflow_datasets as tfds

    out_dir = os.fspath(out_dir)
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard: {examples_per_shard} < 1")
    stream = (Example(*example) for example in examples)
    first = next(stream, None)
    if first is None:
        raise ValueError("no examples to write")
    with_images = first.image is not None
    wanted = {
        "encoder_dir": encoder.directory,
        "max_length": encoder.max_length,
        "width": encoder.width,
        "with_images": with_images,
    }
    existing = read_metadata(out_dir)
    if existing is not None:
        check_compatible(out_dir, existing, wanted, split)
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    metadata = {key: wanted[key] for key in ("encoder_dir", "max_length", "width")}
    incomplete = list((existing or {}).get("incomplete_splits", []))
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=NAME, version=tfds.core.Version(VERSION), data_dir=out_dir, module_name=""
        ),
        description="Captions with their T5 encoder outputs (mcm_jax.data.embed_text).",
        features=features(encoder.width, with_images=with_images),
        metadata=tfds.core.MetadataDict(**metadata, incomplete_splits=incomplete + [split]),
    )
    writer = tfds.core.SequentialWriter(
        ds_info=info, max_examples_per_shard=examples_per_shard, overwrite=existing is None
    )
    # Extending a data set, the writer reloads `info` from the directory, metadata included:
    # mark the split incomplete again before anything is written.
    info.metadata["incomplete_splits"] = incomplete + [split]
    writer.initialize_splits([split])

    start = last_log = time.monotonic()
    count = 0
    for batch in _batches(itertools.chain([first], stream), encoder.batch_size):
        embeddings, lengths = encoder.encode([example.caption for example in batch])
        rows = []
        for example, embedding, length in zip(batch, embeddings, lengths):
            if (example.image is not None) != with_images:
                raise ValueError(
                    f"example {example.id or count}: every example needs an image, or none may "
                    f"(the first {'had' if with_images else 'had none'})"
                )
            row = {"caption": example.caption, "text": embedding[:length],
                   "id": example.id or str(count)}
            if with_images:
                row["image"] = storable_image(example.image, example.id or str(count))
            rows.append(row)
            count += 1
        writer.add_examples({split: rows})
        if time.monotonic() - last_log >= LOG_EVERY_S:
            last_log = time.monotonic()
            rate = count / (last_log - start)
            logging.info("%s: %d examples, %.1f examples/s", split, count, rate)
    info.metadata["incomplete_splits"] = incomplete
    writer.close_all()
    seconds = time.monotonic() - start
    logging.info("%s: wrote %d examples in %.0f s (%.1f examples/s) to %s",
                 split, count, seconds, count / max(seconds, 1e-9), out_dir)
    return count
