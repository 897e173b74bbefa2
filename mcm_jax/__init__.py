"""mcm_jax: Multistep Consistency Models and their diffusion teachers in JAX/Flax."""

import os

# Keras (the frozen T5 and CLIP, through keras-hub) must run on JAX. Keras picks its backend when
# first imported, and TensorFlow Datasets may import it first, so the default is set here, before
# any of that; a backend the user chose explicitly is kept (and mcm_jax.keras_backend refuses it).
os.environ.setdefault("KERAS_BACKEND", "jax")
