"""ImageNet64 Multistep Consistency Model, distilled (cd) or trained (ct) from an ImageNet64 teacher.

    python -m mcm_jax.main --config=configs/imagenet64_mcm.py:steps=8,method=cd,size=small \
        --config.teacher.workdir=gs://BUCKET/mcm/imagenet64_diffusion_small \
        --workdir=gs://BUCKET/mcm/imagenet64_mcm_small_cd_s8 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `steps=S,method=cd|ct,size=small|large` (defaults 8, cd, small). `size` must be the
teacher's: the student starts from the teacher's EMA parameters, so network, data and schedule are
the teacher config's (`imagenet64_diffusion`), dropout included (paper appendix A.1: 0.2 on the
small middle stack, 0.1 on every transformer block of the large network).

The paper's settings (section 5.1, appendix A.1; docs/method.md §4–5): batch 2048, 200k
iterations, teacher steps annealed from 64 to 1280 over the first 100k, xvar_frac 0.75 (CD),
pseudo-Huber c = 1e-4 on the v-space error, no guidance. The paper gives no optimizer settings:
we keep the teacher's (Adam, learning rate 1e-4 after 1,000 warm-up steps, b2 0.99, clipping at
norm 1, EMA 0.9999).

`teacher.workdir` stays "" here and must be given (`--config.teacher.workdir=...`).
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.IMAGENET_MCM_ARGS


def get_config(arg: str = ""):
    return presets.imagenet_mcm(64, arg)
