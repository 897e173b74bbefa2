"""The data config: which data sets exist, what they can give, and every field's default.

TF-free, so experiment configs and the core can use it on a machine without TensorFlow; the
input pipeline (mcm_jax/data/input_pipeline.py) reads data through it.
"""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a supported data set offers and its defaults."""

    resolutions: tuple[int, ...] | None  # the only resolutions it can give; None: any multiple of 8
    channels: int
    num_classes: int
    eval_split: str
    random_flip: bool  # default: flip natural images, never digits (nor captioned ones)
    adm_center_crop: bool  # full-size images: ADM's resize and centre crop
    captioned: bool = False  # text-to-image data: T5 embeddings of each image's caption
    # TFDS downloads it to prepare it; the jobs never do: it must be prepared in data.data_dir
    downloaded: bool = False


# Caption data (paper §5.2) is cropped and resized to any resolution that is a multiple of this;
# the network checks its own downsampling against the resolution (models.validate).
RESOLUTION_MULTIPLE = 8


DATASETS = {
    # The bundled digits: 8 px natively, built at each resolution (mcm_jax.data.digits).
    "digits": DatasetSpec((8, 16, 32), 1, 10, "test", False, False),
    "cifar10": DatasetSpec((32,), 3, 10, "test", True, False, downloaded=True),
    "imagenet2012": DatasetSpec((64, 128), 3, 1000, "validation", True, True),
    "imagenet_resized/64x64": DatasetSpec(
        (64,), 3, 1000, "validation", True, False, downloaded=True
    ),
    # Image-caption pairs with frozen T5 embeddings, in a TFDS directory (docs/data.md).
    "captions": DatasetSpec(None, 3, 0, "validation", False, True, captioned=True),
}


def default_data_config(name: str = "digits") -> ml_collections.ConfigDict:
    """The data config with the defaults of data set `name`.

    Fields:
      name: "digits" | "cifar10" | "imagenet2012" | "imagenet_resized/64x64" | "captions".
      resolution: image side in pixels; digits 8, 16 or 32; cifar10 32; imagenet2012 64 or 128
        (ADM's box downsampling, bicubic resize and centre crop); imagenet_resized/64x64 64;
        captions any multiple of 8 (default 64; the paper's text-to-image model: 512), with
        imagenet2012's resize and centre crop.
      data_dir: TFDS data directory; None is TFDS's default ($TFDS_DATA_DIR or
        ~/tensorflow_datasets); a gs:// path works. captions: the embedded data set's own
        directory (the one holding dataset_info.json), required.
      train_split, eval_split: TFDS split specs ("train", "validation[:10000]", ...).
      shuffle_buffer: examples in the shuffle buffer; they are held encoded (ImageNet: about
        110 kB each).
      random_flip: random horizontal flips in training (natural images only).
      prefetch: batches tf.data prepares ahead.
      num_parallel_calls: decode and preprocess parallelism; -1 is tf.data.AUTOTUNE.
      autotune: tf.data's autotuner, which tunes the AUTOTUNE parallelism and buffers as the
        run reads; off, AUTOTUNE is min(16, cores). TensorFlow 2.21 holds an iterator's
        teardown until the autotuner's next wake-up, which comes later the longer the iterator
        has run (up to a minute): a smoke test's end waited up to 40 s, and the digits
        experiments, dozens of runs in one process, waited after each. So runlocal and digits
        (16 px arrays, nothing to tune) turn it off; the other data sets keep it.
      class_conditional: True: the model takes the data set's labels; False: an unconditional
        model (labels are read but not used; no guidance). captions has no classes: its
        batches carry label 0, the null label, and the text conditions the model.
      text_length (captions only): tokens per example after padding or truncation.
      synthetic: train on synthetic examples of the data set's shapes and classes instead of
        reading it: set only by a runlocal smoke test whose data is not prepared in data_dir
        (mcm_jax.runlocal); a run without runlocal refuses it.
      text_width (captions only): the text encoder's width (4096: T5 v1.1 XXL), checked against
        the data set; the model's text width follows it (`text_shape`).
    """
    spec = dataset_spec(name)
    config = ml_collections.ConfigDict()
    config.name = name
    config.resolution = {"digits": 16, "captions": 64}.get(name) or spec.resolutions[0]
    config.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.train_split = "train"
    config.eval_split = spec.eval_split
    config.shuffle_buffer = 10_000
    config.random_flip = spec.random_flip
    config.prefetch = 2
    config.class_conditional = True
    config.num_parallel_calls = -1
    config.autotune = name != "digits"
    config.synthetic = False
    if spec.captioned:
        config.text_length = 128
        config.text_width = 4096
    return config


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(
            f"data.name={name!r} is not supported: expected one of {sorted(DATASETS)}."
        )
    return DATASETS[name]


def checked_spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
    """The data set's spec, after checking the fields that need no data: that it can give
    data.resolution and, for captions, data.data_dir, data.text_length and data.text_width."""
    spec = dataset_spec(data_config.name)
    if spec.captioned:
        resolution = data_config.resolution
        if not (isinstance(resolution, int) and resolution > 0
                and resolution % RESOLUTION_MULTIPLE == 0):
            raise ValueError(
                f"data.resolution={resolution!r}: data.name='captions' needs a positive multiple "
                f"of {RESOLUTION_MULTIPLE}."
            )
        if not data_config.data_dir:
            raise ValueError(
                "data.data_dir is not set: data.name='captions' reads the embedded data set's "
                "directory (the one holding dataset_info.json)."
            )
        text_shape(data_config)
    elif data_config.resolution not in spec.resolutions:
        raise ValueError(
            f"data.resolution={data_config.resolution} is not available for "
            f"data.name={data_config.name!r}: set data.resolution to one of {spec.resolutions}"
            + ("." if data_config.name in ("digits", "imagenet2012") else
               " (imagenet2012 gives 64 and 128).")
        )
    return spec


def image_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, C) of one example: C is 1 for digits, 3 for the others. The model's input shape:
    the network config holds no resolution or channels of its own. Whether the data set can give
    data.resolution is the input pipeline's check (`checked_spec`): a model or benchmark on
    synthetic data may run at any resolution."""
    channels = dataset_spec(data_config.name).channels
    return (data_config.resolution, data_config.resolution, channels)


def num_classes(data_config: ml_collections.ConfigDict) -> int:
    """Number of class labels the model takes (labels are 0 .. num_classes - 1; num_classes is
    the model's null label); 0 for an unconditional model (`class_conditional=False`)."""
    return dataset_spec(data_config.name).num_classes if data_config.class_conditional else 0


def text_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """(text_length, text_width) of one example's text for caption data, None for other data:
    the one source of the model's text width and of the texts' shape."""
    if not dataset_spec(data_config.name).captioned:
        return None
    for field in ("text_length", "text_width"):
        value = data_config[field]
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"data.{field}={value!r}: expected an integer >= 1.")
    return data_config.text_length, data_config.text_width
