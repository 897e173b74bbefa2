"""Class-conditional ImageNet128 diffusion teacher: the ImageNet64 recipe at 128 px.

    python -m mcm_jax.main --config=configs/imagenet128_diffusion.py:size=small \
        --workdir=gs://BUCKET/mcm/imagenet128_diffusion_small \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `size=small|large` (default small): the paper's base (397M) and large (1.25B) networks,
which add a 128-channel ResNet level at 128x128 to the ImageNet64 ones (dropout per the paper's
appendix A.1: 0.1 on the small middle stack; 0.1 on every block of the large network except those
at 128x128). Everything else, including the optimizer choices, is
`mcm_jax.config.presets.imagenet_teacher`; the schedule interpolates from 32 px to 128 px. As in the
paper, the loss is simple diffusion's multiscale loss with one 2x2 average pooling (128 and 64 px).

`--mode=eval` defaults to the paper's teacher baseline, 512 aDDIM steps; the small (base) network
is evaluated with classifier-free guidance of weight `presets.IMAGENET128_GUIDANCE_WEIGHT` (0.2),
because the paper guides its base ImageNet128 models (section 5.1) without giving the weight.
That weight is ours, in the
convention x = x_cond + w (x_cond - x_uncond) (w = 0: no guidance): small, because FID is lowest
at mild guidance and grows as stronger guidance trades diversity for fidelity. The small CD
student distils the teacher guided with the same weight (`imagenet128_mcm`).
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.IMAGENET_DIFFUSION_ARGS


def get_config(arg: str = ""):
    return presets.imagenet_diffusion(128, arg)
