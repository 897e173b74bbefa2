"""Class-conditional ImageNet128 diffusion teacher: the ImageNet64 recipe at 128 px.

    python -m mcm_jax.main --config=configs/imagenet128_diffusion.py:size=small \
        --workdir=gs://BUCKET/mcm/imagenet128_diffusion_small \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `size=small|large` (default small): the paper's base (397M) and large (1.25B) networks,
which add a 128-channel ResNet level at 128x128 to the ImageNet64 ones. Everything else, including
the optimizer choices, is `imagenet64_diffusion.imagenet_teacher`; the schedule interpolates from
32 px to 128 px.
"""

from configs.imagenet64_diffusion import imagenet_teacher


def get_config(arg: str = ""):
    return imagenet_teacher(128, arg)
