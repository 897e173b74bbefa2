"""Encodes captions with a frozen T5 encoder into a TFDS data set, once, before text-to-image
training (paper §5.2).

    python -m mcm_jax.data.embed_text --encoder_dir=DIR --out=OUT --split=train \\
        --source=folder:PATH | tar:GLOB | tfds:coco_captions/SPLIT | prompts:FILE

DIR is a KerasHub T5 preset directory (local or gs://); OUT (local or gs://) gets one split per
run, all written with the same encoder; `tfds.builder_from_directory(OUT)` reads it. The sources
are described in mcm_jax/data/caption_sources.py, the format in embedded_captions.py, and
both in docs/data.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from absl import flags, logging

from mcm_jax import paths
from mcm_jax.run import cli

FLAGS = flags.FlagValues()  # this command's own (see mcm_jax.run.cli)
# A TFDS split name that is not also a split expression ("a+b", "x[:3]") or a path.
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
flags.DEFINE_string("encoder_dir", None, "KerasHub T5 preset directory (local or gs://)",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "output data set directory (local or gs://)", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "name of the split to write", flag_values=FLAGS)
flags.DEFINE_string("source", None, "folder:PATH, tar:GLOB, tfds:coco_captions/SPLIT or "
                    "prompts:FILE", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data dir for tfds: sources (default: TFDS's)",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_length", 128, "tokens per caption, EOS included (longer ones are cut)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "captions per encoder call", flag_values=FLAGS)
flags.DEFINE_integer("examples_per_shard", 1000, "examples per output file", flag_values=FLAGS)
flags.DEFINE_integer("caption_seed", 0, "seed of the caption chosen per coco_captions image",
                     flag_values=FLAGS)


def main(argv: Sequence[str]) -> None:
    """Reads --source, encodes its captions and writes split --split of --out. A mistake in a flag
    or in what it names ends with a SystemExit naming the flag."""
    rest = FLAGS(argv)[1:]
    if rest:
        raise SystemExit(f"unexpected arguments: {rest}")
    for name in ("encoder_dir", "out", "source", "split"):
        if not FLAGS[name].value:
            raise SystemExit(f"--{name}: required")
    for name in ("max_length", "batch_size", "examples_per_shard"):
        if FLAGS[name].value < 1:
            raise SystemExit(f"--{name}: {FLAGS[name].value} < 1")
    if not SPLIT_NAME.fullmatch(FLAGS.split):
        raise SystemExit(f"--split: {FLAGS.split!r}: use letters, digits and underscores only")

    from mcm_jax.data import caption_sources, embedded_captions
    from mcm_jax.data import input_pipeline  # noqa: F401  keeps TF off accelerators
    from mcm_jax.text import text_encoder

    encoder_dir = paths.resolve(FLAGS.encoder_dir)
    try:
        text_encoder.check_preset_dir(encoder_dir)
    except ValueError as error:
        raise SystemExit(f"--encoder_dir: {error}") from None
    out = paths.resolve(FLAGS.out)
    try:  # cheap checks before loading the encoder (its width is checked when writing)
        existing = embedded_captions.read_metadata(out)
        if existing is not None:
            embedded_captions.check_compatible(
                out, existing, {"encoder_dir": encoder_dir, "max_length": FLAGS.max_length},
                FLAGS.split,
            )
    except embedded_captions.OutDirError as error:
        raise SystemExit(f"--out: {error}") from None
    except Exception as error:  # anything TFDS cannot read as a data set
        raise SystemExit(f"--out: {out} exists but is not a readable data set ({error})") from None

    try:
        examples = caption_sources.open_source(
            FLAGS.source, data_dir=FLAGS.data_dir, caption_seed=FLAGS.caption_seed
        )
        first = next(examples, None)
    except caption_sources.SourceError as error:
        raise SystemExit(f"--source: {error}") from None
    if first is None:
        raise SystemExit(f"--source: {FLAGS.source} holds no examples")

    logging.info("loading the T5 encoder from %s", FLAGS.encoder_dir)
    try:
        encoder = text_encoder.TextEncoder.from_dir(
            encoder_dir, max_length=FLAGS.max_length,
            batch_size=FLAGS.batch_size,
        )
    except (ValueError, OSError) as error:
        raise SystemExit(f"--encoder_dir: cannot load {FLAGS.encoder_dir} ({error})") from None
    try:
        count = embedded_captions.write_embedded_captions(
            out, FLAGS.split, itertools.chain([first], examples), encoder,
            examples_per_shard=FLAGS.examples_per_shard,
        )
    except embedded_captions.OutDirError as error:
        raise SystemExit(f"--out: {error}") from None
    except ValueError as error:  # an example of the source (the split stays marked incomplete)
        raise SystemExit(f"--source: {FLAGS.source}: {error}") from None
    print(f"{FLAGS.split}: {count} examples embedded with {FLAGS.encoder_dir} "
          f"(width {encoder.width}, max_length {encoder.max_length}) in {out}")


if __name__ == "__main__":
    cli.run(main, FLAGS)
