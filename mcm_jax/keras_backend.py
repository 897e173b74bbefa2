"""keras and keras_hub on Keras's JAX backend, for the frozen networks that KerasHub runs: the T5
text encoder (mcm_jax.text_encoder) and CLIP (mcm_jax.eval.clip_score).

Keras picks its backend when first imported; mcm_jax/__init__.py defaults KERAS_BACKEND to jax
before anything can import it. Only those two modules import keras, so the core stays Keras-free.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np


def import_keras_hub(user: str) -> tuple[Any, Any]:
    """(keras, keras_hub) on JAX; RuntimeError naming `user` (what needs them) if keras was asked
    for, or already runs on, another backend."""
    if "keras" not in sys.modules:
        requested = os.environ.get("KERAS_BACKEND", "jax")
        if requested != "jax":
            raise RuntimeError(
                f"{user} runs KerasHub on Keras's JAX backend, but KERAS_BACKEND={requested!r}; "
                "unset it or set KERAS_BACKEND=jax"
            )
    import keras
    import keras_hub

    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"{user} runs KerasHub on Keras's JAX backend, but keras was imported with the "
            f"{backend!r} backend; set KERAS_BACKEND=jax, or import mcm_jax before anything "
            "imports keras (importing tensorflow or tensorflow_datasets does)"
        )
    return keras, keras_hub


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """keras.utils.set_random_seed(seed) for the block (the weights of a random network built in
    it), then the global random states as they were: it also seeds Python, numpy and TensorFlow
    globally, and a TensorFlow global seed changes every later seeded tf.data shuffle (the
    training order of a run in the same process)."""
    import keras

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tensorflow = sys.modules.get("tensorflow")  # None where its import is blocked
        if tensorflow is not None:
            tensorflow.random.set_seed(None)
