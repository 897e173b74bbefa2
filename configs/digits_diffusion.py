"""Diffusion teacher on the bundled digits (16 px, 10 classes): the CPU smoke experiment.

    python -m mcm_jax.main --config=configs/digits_diffusion.py --workdir=/tmp/digits_teacher
"""

from mcm_jax import presets


def get_config(arg: str = ""):
    return presets.digits_diffusion(arg)
