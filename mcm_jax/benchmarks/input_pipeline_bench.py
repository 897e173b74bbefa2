"""Throughput of the imagenet2012 training pipeline, on mocked JPEGs of ImageNet-like sizes.

    python -m mcm_jax.benchmarks.input_pipeline_bench [--resolution 64] [--batches 20]

TFDS is mocked (`tfds.testing.mock_data`) with a pool of synthetic JPEGs whose sides follow
ImageNet's common shapes (mostly 500 px on the long side) and whose content is smooth colour
plus noise, so decoding, ADM's box/bicubic resizing and flips do about the real work; the figure
leaves out reading records from disk or GCS. Prints examples per CPU-second of the process (all
TF threads), which is the per-core rate even on a shared machine, and the wall-clock rate.
"""

import io
import os
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from PIL import Image

from mcm_jax.run import cli

# (height, width) of ImageNet train images and how often they occur, roughly.
_SHAPES = [((375, 500), 0.40), ((500, 375), 0.15), ((333, 500), 0.15), ((500, 333), 0.05),
           ((500, 500), 0.10), ((480, 640), 0.10), ((768, 1024), 0.05)]
_POOL_SIZE = 128


def _synthetic_jpegs(rng: np.random.Generator) -> list[bytes]:
    """Photo-like JPEGs: smooth colour fields with noise, quality 90."""
    shapes, weights = zip(*_SHAPES)
    jpegs = []
    for index in rng.choice(len(shapes), size=_POOL_SIZE, p=weights):
        height, width = shapes[index]
        coarse = rng.integers(0, 256, size=(height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), float)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.run.cli)
flags.DEFINE_integer("resolution", 64, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 256, "examples per batch", flag_values=FLAGS)
flags.DEFINE_integer("batches", 20, "timed batches", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "untimed batches first", flag_values=FLAGS)


def main(argv: Sequence[str]) -> None:
    """Times the pipeline and prints its rates; `argv` is the command line, program name first."""
    if len(FLAGS(argv)) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    import tensorflow as tf  # after parsing: --help stays fast
    import tensorflow_datasets as tfds

    from mcm_jax.data import input_pipeline
    from mcm_jax.data.tfds_mock import write_tfds_metadata

    jpegs = _synthetic_jpegs(np.random.default_rng(0))
    epoch_size = 16 * FLAGS.batch_size

    def as_dataset(builder, *unused_args, **unused_kwargs) -> tf.data.Dataset:
        pool = tf.constant(jpegs)
        return tf.data.Dataset.range(epoch_size).map(
            lambda i: {
                "image": pool[i % len(jpegs)],
                "label": i % 1000,
                "file_name": tf.strings.as_string(i),
            }
        )

    config = input_pipeline.default_data_config("imagenet2012")
    config.resolution = FLAGS.resolution
    with tempfile.TemporaryDirectory() as data_dir:
        config.data_dir = data_dir
        write_tfds_metadata(data_dir, "imagenet2012", {"train": epoch_size})
        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            batches = input_pipeline.create_train_iterator(
                config, global_batch_size=FLAGS.batch_size, seed=0, process_index=0, process_count=1
            )
            for _ in range(FLAGS.warmup):
                next(batches)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(FLAGS.batches):
                next(batches)
            wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu

    examples = FLAGS.batches * FLAGS.batch_size
    cores = len(os.sched_getaffinity(0))
    mean_kb = np.mean([len(j) for j in jpegs]) / 1e3
    width, height = np.mean([Image.open(io.BytesIO(j)).size for j in jpegs], axis=0)
    print(
        f"imagenet2012 {FLAGS.resolution}px training pipeline on mocked JPEGs (mean {height:.0f}x"
        f"{width:.0f} px, {mean_kb:.0f} kB), batch {FLAGS.batch_size}:\n"
        f"  {examples / cpu:.0f} examples per CPU-second (examples/s per fully used core)\n"
        f"  {examples / wall:.0f} examples/s wall clock on {cores} cores "
        f"({cpu / wall:.2f} cores busy on average)"
    )


if __name__ == "__main__":
    cli.run(main, FLAGS)
