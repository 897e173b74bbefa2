"""CIFAR-10 Multistep Consistency Model, distilled (cd) or trained (ct) from the CIFAR-10 teacher.

    python -m mcm_jax.main --config=configs/cifar10_mcm.py:steps=4,method=cd \
        --config.teacher.workdir=/tmp/cifar10_teacher --workdir=/tmp/cifar10_mcm_cd_s4

Argument: `steps=S,method=cd|ct` (defaults 8, cd). The paper's MCM settings
(`imagenet64_mcm.make_student`) on the teacher config, scaled to the teacher's batch of 512: 100k
iterations with the teacher steps annealed 64 -> 1280 over the first half, the proportion the
paper uses (100k of 200k). No guidance.
"""

from configs import cifar10_diffusion
from configs.imagenet64_mcm import make_student, student_args


def get_config(arg: str = ""):
    args = student_args(arg)
    config = make_student(cifar10_diffusion.get_config(), args["steps"], args["method"])
    config.mcm.anneal_iterations = 50_000
    config.training.num_steps = 100_000
    return config
