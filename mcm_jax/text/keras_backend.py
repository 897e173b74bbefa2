"""keras and keras_hub on Keras's JAX backend, for the frozen networks that KerasHub runs: the T5
text encoder (mcm_jax.text.text_encoder) and CLIP (mcm_jax.eval.clip_score).

Keras picks its backend when first imported; mcm_jax/__init__.py defaults KERAS_BACKEND to jax
before anything can import it. Only those two modules import keras, so the core stays Keras-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from mcm_jax import files as files_lib

WEIGHTS_FILES = ("model.weights.h5", "model.weights.json")  # whole, or sharded


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


def check_preset_dir(
    directory: epath.PathLike, *, files: Sequence[str], classes: Mapping[str, str], help: str
) -> None:
    """ValueError unless `directory` (local or gs://) holds a KerasHub preset: `files`, the
    weights (WEIGHTS_FILES) and JSON configs `classes` naming their classes; `help` says what
    is expected and how to get it."""
    path = epath.Path(directory)
    if not path.is_dir():
        raise ValueError(f"{directory}: no such directory; expected {help}")
    missing = [name for name in files if not (path / name).exists()]
    if not any((path / name).exists() for name in WEIGHTS_FILES):
        missing.append(WEIGHTS_FILES[0])
    if missing:
        raise ValueError(f"{directory} lacks {', '.join(missing)}; expected {help}")
    for name, expected in classes.items():
        try:
            class_name = json.loads((path / name).read_text()).get("class_name")
        except (json.JSONDecodeError, AttributeError) as error:
            raise ValueError(f"{directory}/{name} is not a KerasHub config ({error})") from None
        if class_name != expected:
            raise ValueError(
                f"{directory}/{name} describes a {class_name!r}, not a {expected!r}; expected "
                f"{help}"
            )


@contextlib.contextmanager
def local_preset(directory: epath.PathLike) -> Iterator[str]:
    """The preset `directory` as a local path for KerasHub's loaders: a local one as itself
    (absolute, ~ expanded), a gs:// one copied to a temporary directory for the block."""
    name = os.fspath(directory)
    if "://" not in name:
        yield os.path.abspath(os.path.expanduser(name))
        return
    source = epath.Path(directory)
    with tempfile.TemporaryDirectory(prefix="keras_preset_") as local:
        for item in files_lib.walk_files(source):
            target = epath.Path(local) / item.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            item.copy(target)
        yield local
