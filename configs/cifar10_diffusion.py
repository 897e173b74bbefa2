"""Class-conditional CIFAR-10 diffusion teacher (32 px, the 13M-parameter "cifar10" UViT).

    python -m mcm_jax.main --config=configs/cifar10_diffusion.py --workdir=/tmp/cifar10_teacher

Argument: only `runlocal` (every config file takes it: a laptop smoke test, README.md). CIFAR-10
must be prepared in data.data_dir first (`python -m mcm_jax.data.prepare
cifar10 --data_dir=DIR` on a machine with internet; the runs never download; docs/data.md).
A one-GPU experiment between the digits smoke run and ImageNet. The plain cosine
schedule: it is what the ImageNet configs' interpolated schedule (from 32 px) reduces to at 32 px.
Label dropout 0.1 keeps the unconditional mode for guidance.

Our choices (no paper gives them for this network): batch 512; Adam (b2 0.99) at 2e-4 after a
1,000-step warm-up, clipping at norm 1; EMA 0.9999; 200k steps, about 2,000 epochs.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.NO_ARGS


def get_config(arg: str = ""):
    return presets.cifar10_diffusion(arg)
