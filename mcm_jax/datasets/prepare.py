"""Prepares a TFDS data set once, before training (the pipelines only read prepared data sets).

    python -m mcm_jax.datasets.prepare imagenet2012 --data_dir=DIR [--manual_dir=MANUAL_DIR]
    python -m mcm_jax.datasets.prepare cifar10 --data_dir=gs://BUCKET/tensorflow_datasets

MANUAL_DIR defaults to DIR/downloads/manual.
Equivalent to `tfds build`, whose command line in TFDS 4.9 also needs apache-beam installed.
Names are TFDS names: imagenet2012, imagenet_resized/64x64, cifar10, digits/16x16, ...
"""

from collections.abc import Sequence

from absl import app, flags

from mcm_jax import cli

FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.cli)
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's)", flag_values=FLAGS)
flags.DEFINE_string(
    "manual_dir", None, "manual downloads (default: DATA_DIR/downloads/manual)", flag_values=FLAGS
)


def main(argv: Sequence[str]) -> None:
    """Prepares the TFDS data set named by the one positional argument (digits/16x16, ...)."""
    positional = FLAGS(argv)[1:]
    if len(positional) != 1:
        raise app.UsageError(f"expected one TFDS name (digits/16x16, ...), got {positional}")
    (name,) = positional

    import tensorflow_datasets as tfds

    from mcm_jax import input_pipeline  # noqa: F401  keeps TF off accelerators; registers digits

    builder = tfds.builder(name, data_dir=FLAGS.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=FLAGS.manual_dir)
    )
    sizes = ", ".join(f"{s}: {i.num_examples}" for s, i in builder.info.splits.items())
    print(f"{name} prepared in {builder.data_dir} ({sizes})")


if __name__ == "__main__":
    cli.run(main, FLAGS)
