"""Class-conditional ImageNet64 diffusion teacher: the paper's UViT (appendix A.1), small or large.

    python -m mcm_jax.main --config=configs/imagenet64_diffusion.py:size=small \
        --workdir=gs://BUCKET/mcm/imagenet64_diffusion_small \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `size=small|large` (default small): the paper's base (394M) and large (1.23B) networks.

From the MCM paper (section 5.1, appendix A.1) and simple diffusion: imagenet2012 with ADM's
resize and centre crop plus random flips; the interpolated cosine schedule from 32 px (near noise) to the
image resolution (near data); the v-loss; bfloat16 compute with float32 parameters; global batch
2048; label dropout 0.1 so the teacher can give classifier-free guidance (ImageNet128 base
distillation).

Our choices where the MCM paper is silent (all overridable): Adam with b1 0.9, b2 0.99 and no
weight decay, learning rate 1e-4 after a 1,000-step linear warm-up, constant afterwards; gradient
clipping at global norm 1; one EMA of the parameters with decay 0.9999 (students start from it,
evaluation uses it); 500k steps, about 800 epochs at batch 2048.

`--mode=eval` defaults to the paper's teacher baseline, 512 aDDIM steps; the sample grids written
during training use `training.sample_steps` (128) to stay cheap.
"""

from mcm_jax import config_lib

SIZES = ("small", "large")


def choice(args: dict, key: str, allowed: tuple[str, ...]) -> str:
    """The config argument `key`, checked against `allowed`."""
    value = args[key]
    if value not in allowed:
        raise ValueError(f"config argument {key}={value!r}: expected one of {', '.join(allowed)}")
    return value


def imagenet_teacher(resolution: int, arg: str):
    """The ImageNet teacher at `resolution` (64 or 128) for the argument string `size=...`."""
    size = choice(config_lib.parse_arg(arg, size="small"), "size", SIZES)
    config = config_lib.with_model(config_lib.base_config(), f"imagenet{resolution}_{size}")
    config.objective = "diffusion"

    config.data.name = "imagenet2012"
    config.data.resolution = resolution
    config.data.eval_split = "validation"
    config.data.random_flip = True

    config.schedule.name = "interpolated_cosine"
    config.schedule.noise_resolution_low = 32
    config.schedule.noise_resolution_high = resolution

    config.diffusion.weighting = "v"
    config.diffusion.distance = "mse"
    config.diffusion.label_dropout = 0.1

    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 1000
    config.optimizer.decay = "constant"
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 1.0
    config.ema_decays = (0.9999,)

    config.training.batch_size = 2048
    config.training.num_steps = 500_000
    config.training.checkpoint_every = 5000
    config.training.keep_period = 50_000
    config.training.sample_every = 10_000
    return config


def with_paper_eval(config):
    """Eval defaults of an ImageNet teacher: the paper's diffusion baseline (Table 1, last row),
    512 aDDIM steps. `--config.eval.sweep_steps` / `sweep_methods` change them."""
    config.eval.sweep_steps = (512,)
    config.eval.sweep_methods = ("addim",)
    return config


def get_config(arg: str = ""):
    return with_paper_eval(imagenet_teacher(64, arg))
