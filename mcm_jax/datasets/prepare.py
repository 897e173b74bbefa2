"""Prepares a TFDS data set once, before training (the pipelines only read prepared data sets).

    python -m mcm_jax.datasets.prepare imagenet2012 --data_dir=DIR [--manual_dir=MANUAL_DIR]
    python -m mcm_jax.datasets.prepare cifar10 --data_dir=gs://BUCKET/tensorflow_datasets

MANUAL_DIR defaults to DIR/downloads/manual.
Equivalent to `tfds build`, whose command line in TFDS 4.9 also needs apache-beam installed.
Names are TFDS names: imagenet2012, imagenet_resized/64x64, cifar10, digits/16x16, ...
"""

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="TFDS name, with its config if any (digits/16x16)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument(
        "--manual_dir", default=None, help="manual downloads (default: DATA_DIR/downloads/manual)"
    )
    args = parser.parse_args(argv)

    import tensorflow_datasets as tfds

    from mcm_jax import input_pipeline  # noqa: F401  keeps TF off accelerators; registers digits

    builder = tfds.builder(args.name, data_dir=args.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir)
    )
    sizes = ", ".join(f"{s}: {i.num_examples}" for s, i in builder.info.splits.items())
    print(f"{args.name} prepared in {builder.data_dir} ({sizes})")


if __name__ == "__main__":
    main()
