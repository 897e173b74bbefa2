"""Diffusion teacher on the bundled digits (16 px, 10 classes): the CPU smoke experiment.

    python -m mcm_jax.main --config=configs/digits_diffusion.py --workdir=/tmp/digits_teacher
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.DIGITS_DIFFUSION_ARGS


def get_config(arg: str = ""):
    return presets.digits_diffusion(arg)
