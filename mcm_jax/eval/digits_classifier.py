"""A small CNN classifier of the bundled digits, whose penultimate features define FD-digits.

Inception features mean nothing on 8x8 digits (docs/method.md §9), so on data.name == "digits" the
eval job measures the Fréchet distance in the feature space of this network instead, and reports
how often class-conditional samples are classified as their label. It trains in seconds on a CPU on
the digits train split (numpy only, no TensorFlow) and is cached in the data dir, keyed by
resolution and `VERSION`, so later evals load it. Bump `VERSION` whenever the network, the
training recipe or the seed changes: FD-digits values are comparable only within one version.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util

from mcm_jax import files
from mcm_jax.data import digits_split

VERSION = 1
FEATURE_DIM = 64
CACHE_DIR = "mcm_jax_digits_classifier"
SEED = 0
EPOCHS = 30
BATCH_SIZE = 128
LEARNING_RATE = 3e-3


class DigitsCNN(nn.Module):
    """Conv to the native 8x8 grid, conv and pool to 4x4, a dense layer of FEATURE_DIM (the
    FD-digits features), logits. The first conv has stride resolution/8 and a kernel wider than
    its stride, so every pixel is seen and all resolutions share one architecture."""

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: float NHWC in [-1, 1] at 8, 16 or 32 px; returns (logits, features)."""
        stride = images.shape[1] // 8
        kernel = stride + 1 if stride > 1 else 3
        x = nn.relu(nn.Conv(16, (kernel, kernel), strides=stride)(images))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(FEATURE_DIM)(x.reshape(x.shape[0], -1)))
        return nn.Dense(digits_split.NUM_CLASSES)(features), features


def _from_uint8(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    return images.astype(np.float32) / 127.5 - 1.0


def _random_shift(rng: np.random.Generator, images: np.ndarray, max_shift: int) -> np.ndarray:
    """Shifts each image by up to `max_shift` pixels each way, filling with background (-1)."""
    n, h, w, _ = images.shape
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = np.pad(images, pad, constant_values=-1.0)
    offsets = rng.integers(0, 2 * max_shift + 1, (n, 2))
    return np.stack([p[y : y + h, x : x + w] for p, (y, x) in zip(padded, offsets)])


def train_params(resolution: int, seed: int = SEED) -> dict:
    """Trains DigitsCNN on the digits train split: Adam with cosine decay, random shifts by one
    native pixel. A Python loop of jitted steps: it compiles fast even with unoptimised XLA."""
    images, labels = digits_split.load_digits_split("train", resolution)
    images = _from_uint8(images)
    steps_per_epoch = len(labels) // BATCH_SIZE
    optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, EPOCHS * steps_per_epoch))
    model = DigitsCNN()
    params = model.init(jax.random.PRNGKey(seed), images[:1])["params"]
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            logits, _ = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(EPOCHS):
        order = rng.permutation(len(labels))
        for step in range(steps_per_epoch):
            batch = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            x = _random_shift(rng, images[batch], max_shift=resolution // 8)
            params, opt_state = train_step(params, opt_state, x, labels[batch])
    return jax.device_get(params)


@jax.jit
def _apply(params: dict, images_uint8: jax.Array) -> tuple[jax.Array, jax.Array]:
    return DigitsCNN().apply({"params": params}, _from_uint8(images_uint8))


@dataclasses.dataclass(frozen=True)
class DigitsClassifier:
    """Trained parameters for one resolution, with their accuracy on the digits test split."""

    params: dict
    resolution: int
    test_accuracy: float

    def logits_and_features(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, 10), features (N, FEATURE_DIM)) of uint8 NHWC grey images."""
        images_uint8 = np.asarray(images_uint8)
        expected = (self.resolution, self.resolution, 1)
        if images_uint8.dtype != np.uint8 or images_uint8.shape[1:] != expected:
            raise ValueError(
                f"digits classifier: expected uint8 images of shape (N, {expected}), got "
                f"{images_uint8.dtype} {images_uint8.shape}"
            )
        logits, features = _apply(self.params, images_uint8)
        return np.asarray(logits), np.asarray(features)

    def accuracy(self, images_uint8: np.ndarray, labels: np.ndarray) -> float:
        logits, _ = self.logits_and_features(images_uint8)
        return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def cache_path(data_dir: str | None, resolution: int) -> epath.Path:
    """<data_dir>/mcm_jax_digits_classifier/digits_<r>px_v<VERSION>.npz; None: TFDS's default."""
    if not data_dir:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return epath.Path(data_dir) / CACHE_DIR / f"digits_{resolution}px_v{VERSION}.npz"


def _save(path: epath.Path, classifier: DigitsClassifier) -> None:
    flat = traverse_util.flatten_dict({"params": classifier.params}, sep="/")
    params = {name: np.asarray(value) for name, value in flat.items()}
    # Atomic: concurrent jobs never read half a file.
    files.save_npz(path, test_accuracy=np.float64(classifier.test_accuracy), **params)


def _load(path: epath.Path, resolution: int) -> DigitsClassifier:
    with files.open_npz(path) as archive:
        flat = {k.removeprefix("params/"): archive[k] for k in archive.files if "/" in k}
        accuracy = float(archive["test_accuracy"])
    return DigitsClassifier(traverse_util.unflatten_dict(flat, sep="/"), resolution, accuracy)


def load_or_train(data_dir: str | None, resolution: int) -> DigitsClassifier:
    """The cached classifier for `resolution`, training and caching it first if needed.

    With several processes, process 0 trains and writes while the others wait, so all use the
    same parameters.
    """
    path = cache_path(data_dir, resolution)
    if not path.exists() and jax.process_index() == 0:
        logging.info("training the FD-digits classifier (%d px) into %s", resolution, path)
        params = train_params(resolution)
        test_images, test_labels = digits_split.load_digits_split("test", resolution)
        untested = DigitsClassifier(params, resolution, float("nan"))
        accuracy = untested.accuracy(test_images, test_labels)
        _save(path, dataclasses.replace(untested, test_accuracy=accuracy))
        logging.info("FD-digits classifier test accuracy: %.4f", accuracy)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("digits_classifier_cached")
    return _load(path, resolution)
