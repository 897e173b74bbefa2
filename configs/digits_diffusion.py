"""Diffusion teacher on the bundled digits (16 px, 10 classes): the CPU smoke experiment.

    python -m mcm_jax.main --config=configs/digits_diffusion.py --workdir=/tmp/digits_teacher
"""

from mcm_jax import config_lib


def get_config(arg: str = ""):
    """arg: `model=digits|tiny` (tiny: the test network, for smoke runs)."""
    args = config_lib.parse_arg(arg, model="digits")
    config = config_lib.with_model(config_lib.base_config(), args["model"], channels=1)
    config.objective = "diffusion"
    config.data.name = "digits"
    config.data.resolution = 16
    config.diffusion.label_dropout = 0.1
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.ema_decays = (0.999,)
    config.training.batch_size = 128
    config.training.num_steps = 3000
    config.training.log_every = 100
    config.training.checkpoint_every = 500
    config.training.keep_period = 0
    config.training.sample_every = 1000
    config.training.sample_steps = 64
    return config
