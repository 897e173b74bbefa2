"""The data config: which data sets exist, what they can give, and every field's default.

TF-free, so experiment configs and the core can use it on a machine without TensorFlow; the
input pipeline (mcm_jax/input_pipeline.py) reads data through it.
"""

import dataclasses

import ml_collections

from mcm_jax.datasets import digits_split


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a supported data set offers and its defaults."""

    resolutions: tuple[int, ...]  # the only resolutions it can give
    channels: int
    num_classes: int
    eval_split: str
    random_flip: bool  # default: flip natural images, never digits
    adm_center_crop: bool  # full-size images: ADM's resize and centre crop


DATASETS = {
    "digits": DatasetSpec(
        digits_split.RESOLUTIONS, 1, digits_split.NUM_CLASSES, "test", False, False
    ),
    "cifar10": DatasetSpec((32,), 3, 10, "test", True, False),
    "imagenet2012": DatasetSpec((64, 128), 3, 1000, "validation", True, True),
    "imagenet_resized/64x64": DatasetSpec((64,), 3, 1000, "validation", True, False),
}


def default_data_config(name: str = "digits") -> ml_collections.ConfigDict:
    """The data config with the defaults of data set `name`.

    Fields:
      name: "digits" | "cifar10" | "imagenet2012" | "imagenet_resized/64x64".
      resolution: image side in pixels; digits 8, 16 or 32; cifar10 32; imagenet2012 64 or 128
        (ADM's box downsampling, bicubic resize and centre crop); imagenet_resized/64x64 64.
      data_dir: TFDS data directory; None is TFDS's default ($TFDS_DATA_DIR or
        ~/tensorflow_datasets); a gs:// path works.
      train_split, eval_split: TFDS split specs ("train", "validation[:10000]", ...).
      shuffle_buffer: examples in the shuffle buffer; they are held encoded (ImageNet: about
        110 kB each).
      random_flip: random horizontal flips in training (natural images only).
      prefetch: batches tf.data prepares ahead.
      num_parallel_calls: decode and preprocess parallelism; -1 is tf.data.AUTOTUNE.
    """
    spec = dataset_spec(name)
    config = ml_collections.ConfigDict()
    config.name = name
    config.resolution = 16 if name == "digits" else spec.resolutions[0]
    config.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.train_split = "train"
    config.eval_split = spec.eval_split
    config.shuffle_buffer = 10_000
    config.random_flip = spec.random_flip
    config.prefetch = 2
    config.num_parallel_calls = -1
    return config


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(
            f"data.name={name!r} is not supported: expected one of {sorted(DATASETS)}."
        )
    return DATASETS[name]
