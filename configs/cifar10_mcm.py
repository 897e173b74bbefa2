"""CIFAR-10 Multistep Consistency Model, distilled (cd) or trained (ct) from the CIFAR-10 teacher.

    python -m mcm_jax.main --config=configs/cifar10_mcm.py:steps=4,method=cd \
        --config.teacher.workdir=/tmp/cifar10_teacher --workdir=/tmp/cifar10_mcm_cd_s4

Argument: `steps=S,method=cd|ct` (defaults 8, cd). The paper's MCM settings
(`mcm_jax.config.presets.make_student`) on the teacher config, scaled to the teacher's batch of 512: 100k
iterations with the teacher steps annealed 64 -> 1280 over the first half, the proportion the
paper uses (100k of 200k). No guidance.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.STUDENT_ARGS


def get_config(arg: str = ""):
    return presets.cifar10_mcm(arg)
