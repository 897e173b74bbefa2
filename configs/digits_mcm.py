"""MCM student on the bundled digits, distilled (cd) or trained (ct) from a digits teacher.

    python -m mcm_jax.main --config=configs/digits_mcm.py:steps=4,method=cd \
        --config.teacher.workdir=/tmp/digits_teacher --workdir=/tmp/digits_mcm_s4
"""

from mcm_jax import config_lib
from configs import digits_diffusion


def get_config(arg: str = ""):
    """arg: `steps=S,method=cd|ct,model=digits|tiny`."""
    args = config_lib.parse_arg(arg, steps=8, method="cd", model="digits")
    config = digits_diffusion.get_config(f"model={args['model']}")
    config.objective = "mcm"
    config.mcm.method = args["method"]
    config.mcm.student_steps = int(args["steps"])
    config.mcm.teacher_steps_start = 64
    config.mcm.teacher_steps_end = 256
    config.mcm.anneal_iterations = 1000
    config.optimizer.learning_rate = 2e-4
    config.optimizer.warmup_steps = 50
    config.training.num_steps = 1500
    return config
