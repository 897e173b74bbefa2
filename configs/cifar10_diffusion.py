"""Class-conditional CIFAR-10 diffusion teacher (32 px, the 13M-parameter "cifar10" UViT).

    python -m mcm_jax.main --config=configs/cifar10_diffusion.py --workdir=/tmp/cifar10_teacher

No argument. A one-GPU experiment between the digits smoke run and ImageNet. The plain cosine
schedule: it is what the ImageNet configs' interpolated schedule (from 32 px) reduces to at 32 px.
Label dropout 0.1 keeps the unconditional mode for guidance.

Our choices (no paper gives them for this network): batch 512; Adam (b2 0.99) at 2e-4 after a
1,000-step warm-up, clipping at norm 1; EMA 0.9999; 200k steps, about 2,000 epochs.
"""

from mcm_jax import config_lib


def get_config(arg: str = ""):
    config_lib.parse_arg(arg)  # no arguments: anything given is an error that names it
    config = config_lib.with_model(config_lib.base_config(), "cifar10")
    config.objective = "diffusion"

    config.data.name = "cifar10"
    config.data.resolution = 32
    config.data.eval_split = "test"
    config.data.random_flip = True

    config.schedule.name = "cosine"
    config.diffusion.label_dropout = 0.1

    config.optimizer.learning_rate = 2e-4
    config.optimizer.warmup_steps = 1000
    config.optimizer.b2 = 0.99
    config.optimizer.grad_clip_norm = 1.0
    config.ema_decays = (0.9999,)

    config.training.batch_size = 512
    config.training.num_steps = 200_000
    config.training.checkpoint_every = 5000
    config.training.keep_period = 50_000
    config.training.sample_every = 10_000
    return config
