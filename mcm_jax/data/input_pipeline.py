"""TFDS input pipelines: ImageNet 64/128, imagenet_resized 64, CIFAR-10, the bundled digits and
caption data with T5 embeddings (mcm_jax/data/captions.py).

Each process reads its own share of a split and yields its slice of the global batch as numpy
arrays: {"image": (local_batch, H, W, C) float32 in [-1, 1], "label": (local_batch,) int32}, with
local_batch = global_batch / process_count; caption data adds "text" (local_batch, text_length,
text_width) float16 and "text_mask" (local_batch, text_length) bool, and its labels are 0 (the
null label). The trainer assembles the global arrays with `jax.make_array_from_process_local_data`.

Training streams are a pure function of (seed, epoch, process): every epoch rebuilds its dataset
with seeds derived from those, reads the files and fills the shuffle buffer in a seeded order, and
draws each random flip from a stateless generator keyed by the example's position in the epoch.
The data position is therefore the epoch and the examples consumed in it; resuming rebuilds the
epoch and skips those examples while they are still undecoded records, which is cheap next to
decoding them.
"""

from collections.abc import Iterator

import filelock
import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import mcm_jax.data.digits  # noqa: F401  (registers the TFDS builder "digits")
from mcm_jax.config.data_config import (  # noqa: F401 (image_shape, num_classes, text_shape: API too)
    checked_spec, dataset_spec, default_data_config, image_shape, num_classes, text_shape,
)
from mcm_jax.data import captions, records, synthetic


def _hide_accelerators_from_tensorflow() -> None:
    """TF only feeds data: it must never claim GPU or TPU memory that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except RuntimeError as error:
        raise RuntimeError(
            "TensorFlow already runs on an accelerator: import mcm_jax.data.input_pipeline before "
            "any TensorFlow op runs, so TF stays on the CPU."
        ) from error


_hide_accelerators_from_tensorflow()

Batch = dict[str, np.ndarray]

IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def validate(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    local_device_count: int | None = None,
    process_count: int | None = None,
    split: str | None = None,
    images: bool = True,
) -> None:
    """Checks the data config and batch size before any compute; raises ValueError naming the field.

    Also checks that imagenet2012, cifar10 and imagenet_resized are prepared in data.data_dir (the
    jobs never download: `mcm_jax.data.prepare` does, once), and that caption data is in
    data.data_dir with data.text_width and has `split` (default data.train_split) and, if
    `images`, images.
    """
    missing = sorted(set(default_data_config(data_config.get("name", "digits"))) - set(data_config))
    if missing:
        raise ValueError(
            f"the data config lacks data.{', data.'.join(missing)}: "
            "see input_pipeline.default_data_config() for their meaning and defaults."
        )
    checked_spec(data_config)
    if local_device_count is None:
        local_device_count = jax.local_device_count()
    process_count = jax.process_count() if process_count is None else process_count
    step = process_count * local_device_count
    if global_batch_size <= 0 or global_batch_size % step:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count x local_device_count = {process_count} x {local_device_count} = {step}."
        )
    if data_config.shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer={data_config.shuffle_buffer}: expected at least 1.")
    if data_config.synthetic:
        return  # a runlocal smoke test's synthetic examples: nothing to read
    if _prepared_elsewhere(data_config.name):
        _check_prepared(_builder(data_config), data_config.name)
    if dataset_spec(data_config.name).captioned:
        field = "data.train_split" if split is None else (
            "data.eval_split" if split == data_config.eval_split else "split"
        )
        split = data_config.train_split if split is None else split
        builder = captions.open_builder(data_config)
        captions.check_split(builder, data_config, split, field, images=images)


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    if dataset_spec(data_config.name).captioned:
        return captions.open_builder(data_config)
    name = data_config.name
    if name == "digits":
        name = f"digits/{data_config.resolution}x{data_config.resolution}"
    return tfds.builder(name, data_dir=data_config.data_dir)


def _prepared_elsewhere(name: str) -> bool:
    """Whether the jobs only read data set `name` once `mcm_jax.data.prepare` prepared it:
    imagenet2012 (manual files) and what TFDS downloads (cifar10, imagenet_resized). Digits is
    built where it is read; caption data is written by its own command."""
    return name == "imagenet2012" or dataset_spec(name).downloaded


def is_prepared(data_config: ml_collections.ConfigDict) -> bool:
    """Whether a data set that the jobs only read once prepared (imagenet2012, cifar10,
    imagenet_resized) is prepared in data.data_dir; digits is built where it is read (True)."""
    return not _prepared_elsewhere(data_config.name) or _builder(data_config).is_prepared()


def missing_imagenet_files(manual_dir: epath.PathLike) -> list[str]:
    """The ImageNet archives TFDS needs that are not in `manual_dir`."""
    return [f for f in IMAGENET_MANUAL_FILES if not (epath.Path(manual_dir) / f).exists()]


def _check_prepared(builder: tfds.core.DatasetBuilder, name: str) -> None:
    """Data set `name` (`_prepared_elsewhere`) must be prepared in data.data_dir: say exactly how
    to prepare it. The jobs never download (their machines may have no internet, and several
    hosts would download at once), and ImageNet needs a manual download and hours."""
    if builder.is_prepared():
        return
    root = builder.data_dir_root
    if name != "imagenet2012":
        raise ValueError(
            f"config.data.data_dir: data.name={name!r} is not prepared in '{root}', and the jobs "
            f"never download it: on a machine with internet run `python -m "
            f"mcm_jax.data.prepare {name} --data_dir=DIR` once, then copy DIR/{builder.name} "
            f"to {root}/ (or prepare straight into a gs:// data_dir); see docs/data.md"
        )
    manual_dir = root / "downloads" / "manual"
    missing = missing_imagenet_files(manual_dir)
    build = f"python -m mcm_jax.data.prepare imagenet2012 --data_dir={root}"
    where = f"data.name='imagenet2012' is not prepared in data.data_dir='{root}'"
    if missing:
        raise ValueError(
            f"{where}, and TFDS cannot download ImageNet ({', '.join(missing)} not in "
            f"{manual_dir}): download {' and '.join(IMAGENET_MANUAL_FILES)} from "
            f"https://image-net.org, put them in {manual_dir}, then run `{build}` once."
        )
    raise ValueError(
        f"{where}; the manual files are in {manual_dir}: run `{build}` once (it takes hours)."
    )


def _built_by_runs(name: str) -> bool:
    """Whether a run builds data set `name` itself on first use: the bundled digits, from
    scikit-learn's copy (no network)."""
    return not _prepared_elsewhere(name) and not dataset_spec(name).captioned


def _build_once(builder: tfds.core.DatasetBuilder) -> None:
    """Builds `builder`'s data set unless it is built. On a local file system a lock file beside
    it makes every other process or run that shares the data dir wait, then read what the first
    one built (TFDS alone lets two builders race, and the second fails to rename its copy)."""
    if builder.is_prepared():
        return
    target = epath.Path(builder.data_dir)
    if target.as_uri().startswith("file://"):
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(target.parent / f".{target.name}.lock"))
        if lock.is_locked:
            logging.info("waiting for another process to finish building %s", target)
        with lock:
            _build(builder)  # nothing to do if another process built it meanwhile
    else:  # gs:// and other object stores have no locks: `prepare` has process 0 build it
        _build(builder)


def _build(builder: tfds.core.DatasetBuilder) -> None:
    """Builds `builder`'s data set unless it is built, with a line in the run's log saying so."""
    if not builder.is_prepared():
        logging.info("building the %s data set in %s (first use)", builder.name, builder.data_dir)
        builder.download_and_prepare()


def prepare(data_config: ml_collections.ConfigDict) -> None:
    """Builds the data set of `data_config` once per data dir if runs build it themselves:
    process 0 builds it while the others wait, then every process reads it. Every process of a
    run calls this at the start, before it reads data."""
    if not _built_by_runs(data_config.name):
        return
    if jax.process_index() == 0:
        _build_once(_builder(data_config))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"data set {data_config.name} prepared")


def how_to_prepare(
    builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict
) -> str:
    """What makes `builder`'s data set (data.name in data.data_dir) anew, for a damaged one."""
    if dataset_spec(data_config.name).captioned:
        return (f"write {data_config.data_dir} again with the command that embedded its captions "
                "(python -m mcm_jax.data.embed_text; see docs/data.md)")
    if _prepared_elsewhere(data_config.name):
        name = builder.info.full_name.rsplit("/", 1)[0]  # without the version
        return (f"delete {builder.data_dir}, then run `python -m mcm_jax.data.prepare {name} "
                f"--data_dir={builder.data_dir_root}` (see docs/data.md)")
    return f"delete {builder.data_dir}; the next run builds it again"


def _prepared_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The builder of a prepared data set, never downloading: digits is built here (offline) if
    `prepare` has not built it; cifar10, imagenet_resized and imagenet2012 must have been
    prepared with `mcm_jax.data.prepare`; caption data is read from its directory."""
    builder = _builder(data_config)
    if _prepared_elsewhere(data_config.name):
        _check_prepared(builder, data_config.name)
    elif _built_by_runs(data_config.name) and not builder.is_prepared():
        _build_once(builder)
        builder = _builder(data_config)
    return builder


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples in a split spec of the prepared data set."""
    return _prepared_builder(data_config).info.splits[split].num_examples


class TrainIterator:
    """Infinite training batches of one process; `get_state()` is the position to resume from.

    Epoch e of process p is a fixed stream: files read in an order seeded by (seed, e, p), a
    seeded shuffle buffer, per-example flips keyed by the example's position in the epoch, and
    batches that drop each epoch's remainder. The state counts the examples handed out, so a run
    may resume with another global batch size and continue the same example stream; with another
    number of processes the interrupted epoch restarts from its beginning (see `_position`).
    """

    def __init__(
        self,
        data_config: ml_collections.ConfigDict,
        *,
        global_batch_size: int,
        seed: int,
        state: dict | None,
        process_index: int,
        process_count: int,
    ):
        self._config = data_config
        self._spec = checked_spec(data_config)
        self._seed = seed
        self._global_batch_size = global_batch_size
        self._local_batch_size = global_batch_size // process_count
        self._process_index = process_index
        self._process_count = process_count
        self._builder = _prepared_builder(data_config)
        self._decode = records.decoder(self._builder, data_config, self._spec)
        # Equal shares, so every process has the same number of batches per epoch.
        self._split = tfds.split_for_jax_process(
            data_config.train_split,
            process_index=process_index,
            process_count=process_count,
            drop_remainder=True,
        )
        self._epoch, self._examples_in_epoch, self._examples_seen = self._position(state)
        self._batches = self._epoch_batches(skip_examples=self._examples_in_epoch)
        self._pending: Batch | None = None

    def _position(self, state: dict | None) -> tuple[int, int, int]:
        """(epoch, examples of this process's epoch stream consumed, examples seen in all)."""
        if state is None:
            return 0, 0, 0
        if state["seed"] != self._seed:
            raise ValueError(
                f"data state seed={state['seed']} differs from this run's seed={self._seed}: "
                "the data position belongs to another run."
            )
        if "batch_in_epoch" in state:
            state = self._examples_position(state)
        epoch, in_epoch = int(state["epoch"]), int(state["examples_in_epoch"])
        seen = int(state["examples_seen"])
        if state["process_count"] != self._process_count:
            # Each process reads its own share of the split, so the rest of this epoch cannot be
            # re-split exactly over another number of processes.
            logging.warning(
                "data position: the checkpoint was written by %d processes and this run has %d; "
                "epoch %d cannot be re-split at the example where it stopped, so it restarts "
                "from its beginning (examples seen so far: %d, kept).",
                state["process_count"], self._process_count, epoch, seen,
            )
            in_epoch = 0
        return epoch, in_epoch, seen

    def _examples_position(self, state: dict) -> dict:
        """A position saved in batches (before positions were counted in examples) in examples:
        every finished epoch gave each of its processes share // local_batch batches."""
        processes, batch = state["process_count"], state["global_batch_size"]
        share = self._builder.info.splits[self._config.train_split].num_examples // processes
        per_epoch = share // (batch // processes) * batch
        return {
            "seed": state["seed"], "process_count": processes, "epoch": state["epoch"],
            "examples_in_epoch": state["batch_in_epoch"] * (batch // processes),
            "examples_seen": state["epoch"] * per_epoch + state["batch_in_epoch"] * batch,
        }

    def _epoch_batches(self, *, skip_examples: int) -> Iterator[Batch]:
        entropy = [self._seed, self._epoch, self._process_index]
        file_seed, buffer_seed, flip_seed = map(
            int, np.random.SeedSequence(entropy).generate_state(3)
        )
        ds = records.read(
            self._builder, self._split, shuffle_seed=file_seed, spec=self._spec,
            autotune=self._config.autotune,
        )
        ds = ds.shuffle(
            self._config.shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False
        )
        ds = ds.enumerate()  # position in the epoch: the key of the example's flip
        ds = ds.skip(skip_examples)  # still encoded: cheap
        random_flip = self._config.random_flip

        def preprocess(position, record):
            example = self._decode(record)
            if random_flip:
                key = tf.stack([tf.constant(flip_seed, tf.int64), position])
                flip = tf.random.stateless_uniform([], seed=key) < 0.5
                example["image"] = tf.where(
                    flip, tf.reverse(example["image"], axis=[1]), example["image"]
                )
            return example

        ds = ds.map(
            preprocess, num_parallel_calls=self._config.num_parallel_calls, deterministic=True
        )
        ds = ds.batch(self._local_batch_size, drop_remainder=True)
        ds = ds.prefetch(self._config.prefetch)
        how = how_to_prepare(self._builder, self._config)
        return records.numpy_batches(ds, self._builder, self._split, how)

    def _next_batch(self) -> Batch:
        """The next batch, moving on to the next epoch when this one is used up."""
        while True:
            batch = next(self._batches, None)
            if batch is not None:
                return batch
            if self._examples_in_epoch == 0:
                raise ValueError(
                    f"data.train_split={self._config.train_split!r} has fewer examples per process "
                    f"than the local batch ({self._local_batch_size}): use a larger split or a "
                    "smaller global_batch_size."
                )
            self._epoch += 1
            self._examples_in_epoch = 0
            self._batches = self._epoch_batches(skip_examples=0)

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> Batch:
        batch = self._pending if self._pending is not None else self._next_batch()
        self._pending = None
        self._examples_in_epoch += self._local_batch_size
        self._examples_seen += self._global_batch_size
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position after the batches handed out so far.

        {"seed", "process_count", "epoch", "examples_in_epoch", "examples_seen"}: the epoch, how
        far each process is into its share of it, and the examples consumed by all processes;
        the same on every process. At the end of an epoch it already names the next one (the
        next batch is fetched to find out), so a resume never reads through a finished epoch.
        """
        if self._pending is None:
            self._pending = self._next_batch()
        return {
            "seed": self._seed,
            "process_count": self._process_count,
            "epoch": self._epoch,
            "examples_in_epoch": self._examples_in_epoch,
            "examples_seen": self._examples_seen,
        }


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index}: expected 0 <= process_index < {process_count}."
        )
    return process_index, process_count


def create_train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    state: dict | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainIterator:
    """Infinite, shuffled, resumable training batches of this process (see TrainIterator).

    `state` is a `get_state()` of an earlier iterator with the same seed: with the same process
    count the new iterator continues exactly where that one was (any global batch size); with
    another, it restarts the interrupted epoch and logs a warning.
    """
    process_index, process_count = _process(process_index, process_count)
    validate(data_config, global_batch_size=global_batch_size, process_count=process_count)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative int.")
    if data_config.synthetic:
        return synthetic.SyntheticTrainIterator(
            data_config, global_batch_size=global_batch_size, seed=seed, state=state,
            process_index=process_index, process_count=process_count,
        )
    return TrainIterator(
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        state=state,
        process_index=process_index,
        process_count=process_count,
    )


def create_eval_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    split: str | None = None,
    num_examples: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    images: bool = True,
) -> Iterator[Batch]:
    """One pass over an evaluation split (default data.eval_split) in file order.

    Every example comes exactly once across processes; the last batches are padded (zeros:
    image, label 0, text, False text_mask, empty caption) and batch["mask"] (bool) marks the real
    examples. Every process yields the same number of batches. `num_examples` keeps the first
    that many examples of a plain split name. Caption data also gives "text", "text_mask" and
    "caption" (numpy bytes, for CLIP scores); `images=False` leaves the images out (sampling from
    prompts; the only way to read a prompt-only set).
    """
    process_index, process_count = _process(process_index, process_count)
    split = data_config.eval_split if split is None else split
    validate(
        data_config, global_batch_size=global_batch_size, process_count=process_count,
        split=split, images=images,
    )
    spec = checked_spec(data_config)
    builder = _prepared_builder(data_config)
    total = builder.info.splits[split].num_examples
    if num_examples is not None:
        if "[" in split or not 1 <= num_examples <= total:
            raise ValueError(
                f"num_examples={num_examples}: expected 1 .. {total} with a plain split name "
                f"(split={split!r}); or leave it None and slice the split, e.g. '{split}[:1000]'."
            )
        split, total = f"{split}[:{num_examples}]", num_examples

    local_batch_size = global_batch_size // process_count
    # tfds.even_splits gives the first (total % process_count) processes one extra example.
    share = total // process_count + (process_index < total % process_count)
    largest_share = -(-total // process_count)
    num_batches = -(-largest_share // local_batch_size)
    padding = num_batches * local_batch_size - share

    reading = dict(images=images, with_captions=spec.captioned)
    decode = records.decoder(builder, data_config, spec, **reading)
    share_split = tfds.even_splits(split, process_count)[process_index]
    ds = records.read(
        builder, share_split, shuffle_seed=None, spec=spec, autotune=data_config.autotune,
        **reading,
    )
    ds = ds.map(
        lambda record: {**decode(record), "mask": True},
        num_parallel_calls=data_config.num_parallel_calls,
        deterministic=True,
    )
    pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padding))
    ds = ds.batch(local_batch_size).prefetch(data_config.prefetch)
    ds = ds.with_options(records.read_options(autotune=data_config.autotune))
    return records.numpy_batches(ds, builder, share_split, how_to_prepare(builder, data_config))
