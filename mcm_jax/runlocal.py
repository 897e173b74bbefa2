"""The run-time side of a config file's `runlocal` argument (presets.runlocal): what a smoke test
on a laptop needs that the config alone cannot say, prepared at the start of the run.

- Image data (cifar10, imagenet2012, imagenet_resized) that is not prepared in data.data_dir:
  the run trains on synthetic examples of its shapes and classes (data.synthetic,
  mcm_jax.data.synthetic) and says so in one line. Prepared data is read as in a real run;
  digits is always there (built offline).
- Caption data (text-to-image) that is not in data.data_dir: a tiny random T5 is built in the
  process and embeds synthetic captions of synthetic images, written as an embedded caption set
  (the real format, read by the real pipeline) under <workdir>/runlocal/; the first eval job
  writes a tiny random CLIP beside it for its CLIP score (training never needs one). The eval job
  of the workdir reads the same files, and a student (objective mcm) reads its runlocal
  teacher's, so it distils on its teacher's data.

A run without runlocal never gets here: `prepare` returns at once, and config_lib.validate
refuses data.synthetic without runlocal.
"""

from __future__ import annotations

import io
import os

import ml_collections
import numpy as np
from absl import logging
from etils import epath

RUNLOCAL_DIR = "runlocal"
COMPLETE = "complete"  # written last: a directory without it was interrupted and is made again
CLIP_DIR = "clip"
TRAIN_CAPTIONS = 32
EVAL_PROMPTS = 8
SOURCE_SIZE = (96, 128)  # (height, width) of the synthetic images, cropped and resized as real ones
SUBJECTS = ("cat", "dog", "red car", "blue bird", "green tree", "small house", "old boat", "lamp")
SCENES = ("on a beach", "in the snow", "at night", "in a field")


def corpus() -> list[str]:
    """The synthetic captions ("a photo of a cat on a beach", ...): TRAIN_CAPTIONS for training,
    then EVAL_PROMPTS for the eval."""
    return [
        f"a photo of a {SUBJECTS[i % len(SUBJECTS)]} {SCENES[(i // len(SUBJECTS)) % len(SCENES)]}"
        for i in range(TRAIN_CAPTIONS + EVAL_PROMPTS)
    ]


def prepare(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """Makes a runlocal config runnable on this machine (see the module docstring); does nothing
    for a real run. `mode` is main's --mode: training writes the synthetic caption data, the
    eval job the CLIP."""
    if not config.runlocal:
        return
    from mcm_jax.config import data_config
    from mcm_jax.data import input_pipeline

    data = config.data
    if data_config.dataset_spec(data.name).captioned:
        _prepare_captions(config, workdir, mode)
    elif not data.synthetic and not input_pipeline.is_prepared(data):
        data.synthetic = True
        if mode != "train":
            return
        height, width, channels = data_config.image_shape(data)
        logging.warning(
            "runlocal: %s is not prepared in data.data_dir=%s, so this smoke test trains on "
            "synthetic examples of its shapes (%dx%dx%d images, %d classes); a run without "
            "runlocal never does.", data.name, data.data_dir, height, width, channels,
            data_config.num_classes(data),
        )


def _prepare_captions(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    from mcm_jax.data import embedded_captions

    data = config.data
    if data.data_dir and embedded_captions.read_metadata(data.data_dir) is not None:
        data.text_width = int(embedded_captions.read_metadata(data.data_dir)["width"])
        return
    root = epath.Path(workdir) / RUNLOCAL_DIR
    if config.objective == "mcm" and config.teacher.workdir:
        teacher_root = epath.Path(config.teacher.workdir) / RUNLOCAL_DIR
        if (teacher_root / COMPLETE).exists():
            root = teacher_root  # a student trains on its runlocal teacher's data, as in a real run
    if mode == "train" and not (root / COMPLETE).exists():
        if "://" in workdir:
            raise ValueError(
                "runlocal: no caption data in config.data.data_dir, and synthetic caption data "
                "is written only beside a local --workdir; give a local one, or embedded "
                "captions in config.data.data_dir"
            )
        import jax

        if jax.process_count() > 1:
            raise ValueError("runlocal: synthetic caption data is made by a one-process run")
        write_synthetic_captions(str(root), config)
    if mode == "eval" and (root / COMPLETE).exists() and not (root / CLIP_DIR).exists():
        if "://" in os.fspath(root):
            raise ValueError(
                f"runlocal: {root} has no tiny CLIP yet, and the first eval job writes it only "
                "into a local directory; run this eval once on a local copy of the workdir"
            )
        write_clip(str(root))
    logging.warning(
        "runlocal: no caption data in data.data_dir=%s, so this smoke test trains on %d "
        "synthetic images (%dx%d, cropped and resized to %d px) with captions embedded by a tiny "
        "random T5 (width %d) and scores with a tiny random CLIP, all in %s; a run without "
        "runlocal never does.", data.data_dir, TRAIN_CAPTIONS, *SOURCE_SIZE, data.resolution,
        data.text_width, root,
    )
    data.data_dir = os.fspath(root / "captions")
    config.eval.clip_dir = os.fspath(root / CLIP_DIR)


def write_synthetic_captions(directory: str, config: ml_collections.ConfigDict) -> None:
    """Writes into `directory` (local, new) a tiny random T5 (`text_encoder`, width
    data.text_width) and synthetic images with captions embedded by it (`captions`: train and
    data.eval_split, the prompts); then the file COMPLETE, so that a directory an interrupted run
    left is made again."""
    import shutil

    from PIL import Image

    from mcm_jax.data import embedded_captions, synthetic
    from mcm_jax.text import text_encoder

    data = config.data
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    texts = corpus()
    encoder_dir = os.path.join(directory, "text_encoder")
    text_encoder.write_tiny_encoder(encoder_dir, texts, width=data.text_width)
    encoder = text_encoder.TextEncoder.from_dir(
        encoder_dir, max_length=data.text_length, batch_size=8
    )
    images = synthetic.synthetic_images(
        np.random.default_rng(config.seed), len(texts), (*SOURCE_SIZE, 3)
    )

    def jpeg(image: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8)).save(out, format="JPEG")
        return out.getvalue()

    examples = [(jpeg(image), caption) for image, caption in zip(images, texts)]
    out = os.path.join(directory, "captions")
    embedded_captions.write_embedded_captions(out, "train", examples[:TRAIN_CAPTIONS], encoder)
    embedded_captions.write_embedded_captions(
        out, data.eval_split, examples[TRAIN_CAPTIONS:], encoder
    )
    epath.Path(directory, COMPLETE).write_text("")


def write_clip(directory: str) -> None:
    """Writes a tiny random CLIP, with the words of the synthetic captions as its vocabulary, to
    `directory`/CLIP_DIR: made aside and renamed into place, so that two eval jobs starting
    together (or one interrupted) never leave a partial CLIP."""
    import shutil
    import tempfile

    from mcm_jax.eval import clip_score

    words = sorted(set(" ".join(corpus()).split()))
    staging = tempfile.mkdtemp(prefix=f"{CLIP_DIR}.", dir=directory)
    clip_score.write_tiny_clip(os.path.join(staging, CLIP_DIR), words=words)
    try:
        os.rename(os.path.join(staging, CLIP_DIR), os.path.join(directory, CLIP_DIR))
    except OSError:  # another job's CLIP got there first: the same weights (seed 0)
        if not os.path.isdir(os.path.join(directory, CLIP_DIR)):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
