"""MCM student on the bundled digits, distilled (cd) or trained (ct) from a digits teacher.

    python -m mcm_jax.main --config=configs/digits_mcm.py:steps=4,method=cd \
        --config.teacher.workdir=/tmp/digits_teacher --workdir=/tmp/digits_mcm_s4

Argument: `steps=S,method=cd|ct,model=digits|tiny` (defaults 8, cd, digits). The paper's MCM
settings (`mcm_jax.config.presets.make_student`) shortened for a CPU: teacher steps 64 -> 256 annealed over
1,000 of 1,500 iterations, learning rate 2e-4 after 50 warm-up steps.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.DIGITS_MCM_ARGS


def get_config(arg: str = ""):
    return presets.digits_mcm(arg)
