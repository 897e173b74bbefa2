"""TFDS records into examples: a split's records, read in a fixed or seeded order with the images
still encoded, and the decoding of a record into the example the model gets (image in [-1, 1],
label, and for caption data the padded text and its mask). Shared by the training and evaluation
iterators of mcm_jax/input_pipeline.py.
"""

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from mcm_jax.data_config import DatasetSpec
from mcm_jax.datasets import captions
from mcm_jax.datasets.adm_preprocessing import center_crop_adm, decode_like_pil


def read_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def read(
    builder: tfds.core.DatasetBuilder,
    split,
    *,
    shuffle_seed: int | None,
    spec: DatasetSpec,
    images: bool = True,
    with_captions: bool = False,
) -> tf.data.Dataset:
    """The records of a split as dicts of the features read (images still encoded), in file
    order or a seeded file order."""
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, options=read_options(), try_autocache=False
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
