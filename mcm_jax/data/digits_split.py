"""The fixed train/test split of scikit-learn's bundled UCI digits, as numpy arrays.

This module is the one source of truth for the digits split: the TFDS builder
(`mcm_jax.data.digits`) and the FD-digits classifier both read it. It needs only numpy and
scikit-learn, no network and no TensorFlow.
"""

import numpy as np
from sklearn.datasets import load_digits

from mcm_jax.config.data_config import DATASETS

RESOLUTIONS = DATASETS["digits"].resolutions  # the builder configs; 8 is the native size
SPLITS = ("train", "test")
NUM_CLASSES = DATASETS["digits"].num_classes
TEST_FRACTION = 0.2  # of each class, rounded: 359 test and 1,438 train images
SPLIT_SEED = 0
_MAX_VALUE = 16  # the UCI digits count pixels of a 4x4 block: values 0..16


def split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` of one split, ascending.

    Stratified and seeded: within each class, a legacy `np.random.RandomState` permutation (whose
    stream numpy keeps fixed across versions) picks round(TEST_FRACTION * class size) test images.
    """
    if split not in SPLITS:
        raise ValueError(f"digits split={split!r}: expected one of {SPLITS}.")
    labels = load_digits().target
    rng = np.random.RandomState(SPLIT_SEED)
    test = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[: round(TEST_FRACTION * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def load_digits_split(split: str, resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one digits split.

    Returns (images, labels): images uint8 of shape (N, resolution, resolution, 1), the 0..16
    counts mapped to 0..255 and upscaled by pixel replication (no detail is invented); labels
    int32 of shape (N,), in the order of `split_indices(split)`.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"digits resolution={resolution}: expected one of {RESOLUTIONS}.")
    digits = load_digits()
    indices = split_indices(split)
    grey = np.round(digits.images[indices] * (255.0 / _MAX_VALUE)).astype(np.uint8)
    factor = resolution // 8
    images = grey.repeat(factor, axis=1).repeat(factor, axis=2)[..., None]
    return images, digits.target[indices].astype(np.int32)
