"""ImageNet128 Multistep Consistency Model, distilled (cd) or trained (ct) from an ImageNet128 teacher.

    python -m mcm_jax.main --config=configs/imagenet128_mcm.py:steps=8,method=cd,size=small \
        --config.teacher.workdir=gs://BUCKET/mcm/imagenet128_diffusion_small \
        --workdir=gs://BUCKET/mcm/imagenet128_mcm_small_cd_s8 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `steps=S,method=cd|ct,size=small|large` (defaults 8, cd, small); the paper's settings of
`imagenet64_mcm` at 128 px. The one difference: the paper distils the base (small) ImageNet128
model with classifier-free guidance. Its weight is our choice, GUIDANCE_WEIGHT below, in the
convention x = x_cond + w (x_cond - x_uncond) (w = 0: no guidance): a small weight, because FID
is lowest at mild guidance and grows as stronger guidance trades diversity for fidelity. Only CD
can be guided (CT has no teacher network), so small CT runs and all large runs are unguided.
Override with `--config.mcm.guidance_weight=...`.
"""

from configs.imagenet64_mcm import imagenet_student

GUIDANCE_WEIGHT = 0.2


def get_config(arg: str = ""):
    config = imagenet_student(128, arg)
    if config.model_name == "imagenet128_small" and config.mcm.method == "cd":
        config.mcm.guidance_weight = GUIDANCE_WEIGHT
    return config
