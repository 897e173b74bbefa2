"""Where captions (and their images) come from, for `mcm_jax.data.embed_text --source=...`.

    folder:PATH          image files with a same-stem .txt caption, searched recursively
                         (img2dataset's "files" output); .txt files without an image are ignored
    tar:GLOB             WebDataset tar shards: members KEY.jpg (or .png, ...) and KEY.txt
                         (img2dataset's "webdataset" output); samples without image are ignored
    tfds:coco_captions/SPLIT
                         TFDS coco_captions (splits train, val, test, restval) in --data_dir: one
                         example per image with one of its ~5 captions, chosen by a generator
                         seeded with (caption_seed, image id), so the choice never depends on
                         order; for evaluation prompts and FID reference images
    prompts:FILE         one prompt per line, no images; blank lines are skipped

Paths may be local or gs://. Every source yields `Example(image bytes | None, caption, id)` in a
fixed order (sorted paths), and raises SourceError for a mistake in what it reads.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator

import numpy as np
from etils import epath

from mcm_jax import files
from mcm_jax.data.embedded_captions import Example

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
KINDS = ("folder", "tar", "tfds", "prompts")
TFDS_SOURCES = ("coco_captions",)


class SourceError(ValueError):
    """A source that does not exist or holds something unusable."""


def _read_caption(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise SourceError(f"{name}: the caption is not UTF-8 text ({error})") from error


def folder_examples(root: str) -> Iterator[Example]:
    """Images under `root` with their same-stem .txt captions; ids are their paths relative to
    root without the extension.
    Every image is checked to have its caption before the first example is read."""
    base = epath.Path(root)
    if not base.is_dir():
        raise SourceError(f"folder {root}: no such directory")
    names = {os.fspath(p.relative_to(base)) for p in files.walk_files(base)}
    images = sorted(f for f in names if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    for image in images:
        if os.path.splitext(image)[0] + ".txt" not in names:
            raise SourceError(
                f"{base / image}: image without a caption (no same-stem .txt beside it)"
            )
    return _folder_pairs(base, images)


def _folder_pairs(base: epath.Path, images: list[str]) -> Iterator[Example]:
    for image in images:
        name = os.path.splitext(image)[0]
        caption = base / (name + ".txt")
        text = _read_caption(caption.read_bytes(), os.fspath(caption))
        yield Example((base / image).read_bytes(), text, name)


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the key is the path up to the first dot of the base name."""
    directory, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower()


def _tar_samples(path: epath.Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of one tar shard, read as a stream."""
    key, sample = None, {}
    with path.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = _split_member(member.name)
            if member_key != key:
                if sample:
                    yield key, sample
                key, sample = member_key, {}
            sample[extension] = tar.extractfile(member).read()
    if sample:
        yield key, sample


def tar_examples(pattern: str) -> Iterator[Example]:
    """The samples of the WebDataset shards matching `pattern`; ids are SHARD/KEY."""
    import tensorflow as tf

    shards = sorted(epath.Path(p) for p in tf.io.gfile.glob(pattern))
    if not shards:
        raise SourceError(f"tar {pattern}: no file matches")
    for shard in shards:
        try:
            for key, sample in _tar_samples(shard):
                images = [e for e in sample if "." + e in IMAGE_SUFFIXES]
                if not images:
                    continue
                name = f"{shard.name}/{key}"
                if "txt" not in sample:
                    raise SourceError(
                        f"{shard}: sample {key} has an image but no {key}.txt caption"
                    )
                yield Example(sample[images[0]], _read_caption(sample["txt"], name), name)
        except tarfile.TarError as error:
            raise SourceError(f"{shard}: not a readable tar file ({error})") from error


def coco_examples(name: str, data_dir: str | None, caption_seed: int) -> Iterator[Example]:
    """TFDS coco_captions/SPLIT: each image's JPEG bytes as stored, one seeded choice among its
    captions; ids are COCO image ids."""
    import tensorflow_datasets as tfds

    dataset, _, split = name.partition("/")
    if dataset not in TFDS_SOURCES or not split:
        raise SourceError(
            f"tfds:{name}: expected tfds:coco_captions/SPLIT (train, val, test, restval)"
        )
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        raise SourceError(
            f"tfds:{name}: coco_captions is not prepared in {builder.data_dir}; prepare it with "
            "python -m mcm_jax.data.prepare coco_captions --data_dir=DIR, or give --data_dir"
        )
    if split not in builder.info.splits:
        raise SourceError(f"tfds:{name}: no split {split!r} (has {sorted(builder.info.splits)})")
    records = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    for record in tfds.as_numpy(records):
        image_id = int(record["image/id"])
        captions = record["captions"]["text"]
        if not len(captions):
            raise SourceError(f"tfds:{name}: image {image_id} has no caption")
        choice = np.random.default_rng((caption_seed, image_id)).integers(len(captions))
        yield Example(record["image"], captions[choice].decode("utf-8").strip(), str(image_id))


def prompt_examples(path: str) -> Iterator[Example]:
    """One example per non-blank line of `path`; ids are FILE:LINE (1-based)."""
    file = epath.Path(path)
    if not file.exists() or file.is_dir():
        raise SourceError(f"prompts {path}: no such file")
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip():
            yield Example(None, line.strip(), f"{file.name}:{number}")


def open_source(
    spec: str, *, data_dir: str | None = None, caption_seed: int = 0
) -> Iterator[Example]:
    """The examples of `spec` (KIND:ARGUMENT, see the module docstring), read lazily."""
    kind, _, argument = spec.partition(":")
    if kind not in KINDS or not argument:
        raise SourceError(f"{spec!r}: expected one of {', '.join(k + ':...' for k in KINDS)}")
    if kind == "folder":
        return folder_examples(argument)
    if kind == "tar":
        return tar_examples(argument)
    if kind == "tfds":
        return coco_examples(argument, data_dir, caption_seed)
    return prompt_examples(argument)
