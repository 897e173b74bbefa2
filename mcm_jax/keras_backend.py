"""keras and keras_hub on Keras's JAX backend, for the frozen networks that KerasHub runs: the T5
text encoder (mcm_jax.text_encoder) and CLIP (mcm_jax.eval.clip_score).

Keras picks its backend when first imported; mcm_jax/__init__.py defaults KERAS_BACKEND to jax
before anything can import it. Only those two modules import keras, so the core stays Keras-free.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def import_keras_hub(user: str) -> tuple[Any, Any]:
    """(keras, keras_hub) on JAX; RuntimeError naming `user` (what needs them) if keras was asked
    for, or already runs on, another backend."""
    if "keras" not in sys.modules:
        requested = os.environ.setdefault("KERAS_BACKEND", "jax")
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
            f"{backend!r} backend; set KERAS_BACKEND=jax before anything imports keras"
        )
    return keras, keras_hub
