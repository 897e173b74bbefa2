"""TFDS records into examples: a split's records, read in a fixed or seeded order with the images
still encoded, the decoding of a record into the example the model gets (image in [-1, 1],
label, and for caption data the padded text and its mask), and the batches as numpy arrays, with
a damaged record file named. Shared by the training and evaluation iterators of
mcm_jax/data/input_pipeline.py.
"""

import re
import struct
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from mcm_jax.config.data_config import DatasetSpec
from mcm_jax.data import captions
from mcm_jax.data.adm_preprocessing import center_crop_adm, decode_like_pil


def read_options(*, autotune: bool) -> tf.data.Options:
    """Deterministic order; tf.data's autotuner on or off (data.autotune)."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = autotune
    return options


def read(
    builder: tfds.core.DatasetBuilder,
    split,
    *,
    shuffle_seed: int | None,
    spec: DatasetSpec,
    images: bool = True,
    with_captions: bool = False,
    autotune: bool,
) -> tf.data.Dataset:
    """The records of a split as dicts of the features read (images still encoded), in file
    order or a seeded file order."""
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, options=read_options(autotune=autotune), try_autocache=False
    )
    has_image = captions.has_images(builder)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()} if has_image else None,
    )
    if spec.captioned:
        keys = captions.keys(images=images, captions=with_captions)
    else:
        keys = ("image", "label")
    return ds.map(lambda example: {key: example[key] for key in keys})


def decoder(
    builder: tfds.core.DatasetBuilder,
    data_config: ml_collections.ConfigDict,
    spec: DatasetSpec,
    *,
    images: bool = True,
    with_captions: bool = False,
):
    """record -> example: the image (if `images`), the label and, for caption data, the text,
    its mask and (if `with_captions`) the caption."""
    decode_image = _image_decoder(builder, data_config, spec) if images else None

    def decode(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        example = {"image": decode_image(record["image"])} if images else {}
        if spec.captioned:
            return {**example, **captions.decode_text(record, data_config, captions=with_captions)}
        return {**example, "label": tf.cast(record["label"], tf.int32)}

    return decode


def _image_decoder(
    builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict, spec: DatasetSpec
):
    """encoded image -> float32 (H, W, C) in [-1, 1] at data.resolution."""
    image_feature = builder.info.features["image"]
    resolution = data_config.resolution

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        if spec.adm_center_crop:  # ADM decodes with PIL (ImageNet: JPEG; captions: any)
            image = center_crop_adm(decode_like_pil(encoded), resolution)
        else:
            image = image_feature.decode_example(encoded)
        image = tf.ensure_shape(image, (resolution, resolution, spec.channels))
        return tf.cast(image, tf.float32) / 127.5 - 1.0

    return decode


class DamagedDataError(ValueError):
    """A record file of a prepared data set is cut short or corrupted."""


def numpy_batches(
    ds: tf.data.Dataset, builder: tfds.core.DatasetBuilder, split, how_to_prepare: str
) -> Iterator[dict[str, np.ndarray]]:
    """The elements of `ds`, read from `split` of `builder`, as numpy; a damaged record file
    (TensorFlow's DataLossError, which names no file) is a DamagedDataError that names it and
    says `how_to_prepare` the data set again."""
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.DataLossError as error:
            raise DamagedDataError(
                f"{_damage(error.message, builder, split)}; prepare the data set again: "
                f"{how_to_prepare}"
            ) from error


# TensorFlow's DataLossError while reading TFRecords: which damage, at which byte of some file. A
# record is a uint64 length, the masked CRC-32C of those 8 bytes, the data and the data's masked
# CRC-32C. "truncated" gives the offset of the record, "corrupted" that of the checksummed part
# that failed: the length (the record's offset) or the data (12 bytes on).
_DATA_LOSS = re.compile(r"(truncated|corrupted) record at (\d+)")
_HEADER = 12


def _damage(tf_message: str, builder: tfds.core.DatasetBuilder, split) -> str:
    """Which record file of `split` is damaged, and how; the data set's directory where the
    file cannot be told."""
    match = _DATA_LOSS.search(tf_message)
    if not match:
        what = (tf_message.strip().splitlines() or ["data loss"])[0]
    else:
        kind, offset = match.group(1), int(match.group(2))
        files = [instruction.filename
                 for instruction in builder.info.splits[split].file_instructions]
        for file in files:
            damage = _damage_in(file, kind, offset)
            if damage:
                return f"data.data_dir: the record file {file} is damaged ({damage})"
        what = f"a {kind} record at byte {offset}"
    return (f"data.data_dir: a record file of {builder.info.full_name} in {builder.data_dir} is "
            f"damaged ({what})")


def _damage_in(file: str, kind: str, offset: int) -> str | None:
    """What is wrong with `file` if it is the one TensorFlow found a `kind` record in at byte
    `offset`: a record there (or, for a corrupted one, 12 bytes before) that the end of the file
    cuts short or whose data fails its checksum. That record's length must pass its own
    checksum, so a file where the offset is no record boundary is not taken for it (a damaged
    length field itself cannot be pinned to a file this way)."""
    start = offset if kind == "truncated" else offset - _HEADER
    with epath.Path(file).open("rb") as f:
        size = f.seek(0, 2)
        if not 0 <= start < size:
            return None
        f.seek(start)
        header = f.read(_HEADER)
        if len(header) < _HEADER:
            return (f"cut short: it ends inside the header of its record at byte {start}"
                    if kind == "truncated" else None)
        length, length_crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != length_crc:
            return None
        end = start + _HEADER + length + 4
        if end > size:
            return (f"cut short: its record at byte {start} ends at byte {end}, past its end at "
                    f"byte {size}") if kind == "truncated" else None
        data = f.read(length + 4)
        if kind == "corrupted" and _masked_crc(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            return f"its record at byte {start} fails its checksum"
    return None


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    import google_crc32c  # only a damaged data set needs it

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
