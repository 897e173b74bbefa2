"""Prepares a TFDS data set once, before training (the pipelines only read prepared data sets).

    python -m mcm_jax.data.prepare imagenet2012 --data_dir=DIR [--manual_dir=MANUAL_DIR]
    python -m mcm_jax.data.prepare cifar10 --data_dir=gs://BUCKET/tensorflow_datasets

MANUAL_DIR defaults to DIR/downloads/manual.
Equivalent to `tfds build`, whose command line in TFDS 4.9 also needs apache-beam installed.
Names are TFDS names: imagenet2012, imagenet_resized/64x64, cifar10, digits/16x16, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from absl import app, flags
from etils import epath

from mcm_jax import paths
from mcm_jax.run import cli

FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.run.cli)
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

    data_dir = paths.resolve_directory(FLAGS.data_dir, "data_dir") if FLAGS.data_dir else None
    import tensorflow_datasets as tfds

    from mcm_jax.data import input_pipeline  # keeps TF off accelerators; registers digits

    builder = _builder(name, data_dir)
    if name.split("/")[0] == "imagenet2012" and not builder.is_prepared():
        manual_dir = epath.Path(FLAGS.manual_dir or builder.data_dir_root / "downloads" / "manual")
        needed = input_pipeline.IMAGENET_MANUAL_FILES
        missing = input_pipeline.missing_imagenet_files(manual_dir)
        if missing:
            raise FileNotFoundError(
                f"imagenet2012 needs {' and '.join(needed)} (from https://image-net.org) in "
                f"{manual_dir} (--manual_dir; default DATA_DIR/downloads/manual); missing: "
                f"{', '.join(missing)}"
            )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=FLAGS.manual_dir)
    )
    sizes = ", ".join(f"{s}: {i.num_examples}" for s, i in builder.info.splits.items())
    print(f"{name} prepared in {builder.data_dir} ({sizes})")


def _builder(name: str, data_dir: str | None):
    """tfds.builder(name); an unknown name or config is a usage error naming the closest ones
    (checked offline: TFDS looks an unknown name up in its community index on the network)."""
    import tensorflow_datasets as tfds

    dataset = name.partition("/")[0]
    known = tfds.list_builders(with_community_datasets=False)
    if dataset in known:
        try:
            return tfds.builder(name, data_dir=data_dir)
        except ValueError:  # an unknown config
            known = [f"{dataset}/{c.name}" for c in tfds.builder_cls(dataset).BUILDER_CONFIGS]
    closest = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or known[:3]
    raise app.UsageError(f"{name}: not a TFDS data set; closest: {', '.join(closest)}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
