"""Caption data for text-to-image (paper §5.2): a TFDS directory of images, captions and the
captions' frozen T5 token embeddings, as the embedding command writes it (docs/data.md).

The directory (local or gs://) is what `tfds.builder_from_directory` reads, with features
  "image": Image (any size, JPEG, PNG, GIF or BMP; absent in prompt-only sets),
  "caption": Text,
  "text": Tensor (n, width) float16, the embeddings of the caption's n >= 1 real tokens,
and maybe "id": Text. This module opens and checks such a directory and turns an example's
stored text into the model's fixed-shape input: `text_length` tokens, truncated or zero-padded,
and a mask of the real ones. The input pipeline (mcm_jax/data/input_pipeline.py) does the rest, as for
every data set.
"""

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from mcm_jax.config.data_config import text_shape

# Features a caption data set must have; "image" only for training and FID statistics.
REQUIRED_FEATURES = ("caption", "text")


def open_builder(
    data_config: ml_collections.ConfigDict, dir_field: str = "data.data_dir"
) -> tfds.core.DatasetBuilder:
    """The data set in data.data_dir (which the user set as config field `dir_field`), after
    checking that it is caption data whose embeddings are data.text_width wide; a ValueError
    names the field otherwise."""
    path = tfds.core.Path(data_config.data_dir)
    where = f"{dir_field}='{data_config.data_dir}'"
    if not (path / "dataset_info.json").exists():
        raise ValueError(
            f"{where} holds no TFDS data set (no dataset_info.json): set it to the directory "
            "the embedding command wrote (its --out), the one with dataset_info.json and the "
            "record files."
        )
    builder = tfds.builder_from_directory(str(path))
    features = builder.info.features
    missing = [name for name in REQUIRED_FEATURES if name not in features]
    if missing:
        raise ValueError(
            f"{where} is not caption data: it lacks the "
            f"feature(s) {', '.join(missing)} (it has {', '.join(sorted(features))})."
        )
    _, width = text_shape(data_config)
    stored = features["text"].shape[-1]
    if stored != width:
        raise ValueError(
            f"data.text_width={width} differs from the width of the text embeddings in "
            f"{where} ({stored}): set data.text_width={stored}."
        )
    return builder


def has_images(builder: tfds.core.DatasetBuilder) -> bool:
    return "image" in builder.info.features


def check_split(
    builder: tfds.core.DatasetBuilder,
    data_config: ml_collections.ConfigDict,
    split: str,
    field: str,
    *,
    images: bool,
    dir_field: str = "data.data_dir",
) -> None:
    """Checks that the data set has `split` (named by config field `field`) and, if `images`,
    images; a ValueError says what it has instead."""
    where = f"{dir_field}='{data_config.data_dir}'"
    try:
        builder.info.splits[split]
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{field}={split!r} cannot be read from {where} (splits: "
            f"{', '.join(sorted(builder.info.splits))}): {error}"
        ) from None
    interrupted = (builder.info.metadata or {}).get("incomplete_splits", [])
    if {part.split("[")[0].strip() for part in split.split("+")} & set(interrupted):
        raise ValueError(
            f"{field}={split!r}: the embedding command was interrupted while writing this split "
            f"of {where}; delete the directory and write its splits again, or write this split "
            "to another directory."
        )
    if images and not has_images(builder):
        raise ValueError(
            f"{where} has no images (a prompt-only set): it gives prompts to sample from "
            "(create_eval_iterator(..., images=False)), not training data or FID statistics."
        )


def keys(*, images: bool, captions: bool) -> tuple[str, ...]:
    """The stored features a pipeline reads."""
    return ("image",) * images + ("text",) + ("caption",) * captions


def decode_text(
    record: dict[str, tf.Tensor], data_config: ml_collections.ConfigDict, *, captions: bool
) -> dict[str, tf.Tensor]:
    """label 0 (the null label: caption data has no classes), text (text_length, text_width)
    float16 with the padding zeroed, text_mask (text_length,) bool; and the caption (bytes) if
    `captions`. Texts longer than text_length keep their first text_length tokens."""
    length, width = text_shape(data_config)
    tokens = tf.ensure_shape(record["text"], (None, width))[:length]
    count = tf.shape(tokens)[0]
    text = tf.pad(tf.cast(tokens, tf.float16), [[0, length - count], [0, 0]])
    example = {
        "label": tf.constant(0, tf.int32),
        "text": tf.ensure_shape(text, (length, width)),
        "text_mask": tf.range(length) < count,
    }
    if captions:
        example["caption"] = record["caption"]
    return example
