"""Class-conditional ImageNet128 diffusion teacher: the ImageNet64 recipe at 128 px.

    python -m mcm_jax.main --config=configs/imagenet128_diffusion.py:size=small \
        --workdir=gs://BUCKET/mcm/imagenet128_diffusion_small \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `size=small|large` (default small): the paper's base (397M) and large (1.25B) networks,
which add a 128-channel ResNet level at 128x128 to the ImageNet64 ones (dropout per the paper's
appendix A.1: 0.1 on the small middle stack; 0.1 on every block of the large network except those
at 128x128). Everything else, including the optimizer choices, is
`imagenet64_diffusion.imagenet_teacher`; the schedule interpolates from 32 px to 128 px. As in the
paper, the loss is simple diffusion's multiscale loss with one 2x2 average pooling (128 and 64 px).
"""

from configs.imagenet64_diffusion import imagenet_teacher


def get_config(arg: str = ""):
    config = imagenet_teacher(128, arg)
    config.diffusion.multiscale_pools = 1
    return config
