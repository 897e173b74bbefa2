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

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.IMAGENET_DIFFUSION_ARGS


def get_config(arg: str = ""):
    return presets.imagenet_diffusion(64, arg)
