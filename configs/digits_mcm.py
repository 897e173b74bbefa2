"""MCM student on the bundled digits, distilled (cd) or trained (ct) from a digits teacher.

    python -m mcm_jax.main --config=configs/digits_mcm.py:steps=4,method=cd \
        --config.teacher.workdir=/tmp/digits_teacher --workdir=/tmp/digits_mcm_s4

Argument: `steps=S,method=cd|ct,model=digits|tiny` (defaults 8, cd, digits). The paper's MCM
settings (`imagenet64_mcm.make_student`) shortened for a CPU: teacher steps 64 -> 256 annealed over
1,000 of 1,500 iterations, learning rate 2e-4 after 50 warm-up steps.
"""

from configs import digits_diffusion
from configs.imagenet64_mcm import make_student, student_args


def get_config(arg: str = ""):
    args = student_args(arg, model="digits")
    config = digits_diffusion.get_config(f"model={args['model']}")
    config = make_student(config, args["steps"], args["method"])
    config.mcm.teacher_steps_end = 256
    config.mcm.anneal_iterations = 1000
    config.optimizer.learning_rate = 2e-4
    config.optimizer.warmup_steps = 50
    config.training.num_steps = 1500
    return config
