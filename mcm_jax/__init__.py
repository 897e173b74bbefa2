"""mcm_jax: Multistep Consistency Models and their diffusion teachers in JAX/Flax."""

import os

# Keras (the frozen T5 and CLIP, through keras-hub) must run on JAX. Keras picks its backend when
# first imported, and TensorFlow Datasets may import it first, so the default is set here, before
# any of that; a backend the user chose explicitly is kept (and mcm_jax.text.keras_backend refuses
# it).
os.environ.setdefault("KERAS_BACKEND", "jax")


def load(workdir: str, step: int | None = None, ema_index: int = 0):
    """The trained run in `workdir` (teacher or student, local or gs://) as an object with
    `.config`, `.params`, `.denoise(z, t, ...)` and `.sample(...)`: see mcm_jax.api.load and
    docs/api.md. Imported on first use, so `import mcm_jax` stays light."""
    from mcm_jax.api import load as _load

    return _load(workdir, step=step, ema_index=ema_index)
