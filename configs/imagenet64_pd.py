"""ImageNet64 progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) from an ImageNet64
teacher: the baseline the MCM paper's Table 1 sets beside its students, with the same network,
schedule, data and eval as configs/imagenet64_mcm.py.

    python -m mcm_jax.main --config=configs/imagenet64_pd.py:steps=8,size=small \
        --config.teacher.workdir=gs://BUCKET/mcm/imagenet64_diffusion_small \
        --workdir=gs://BUCKET/mcm/imagenet64_pd_small_s8 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Argument: `steps=S,size=small|large` (defaults 8, small); `size` must be the teacher's (the first
student starts from its EMA parameters).

Rounds (docs/method.md §10): the first student takes 256 sampling steps, so its teacher is the
diffusion model at 512 DDIM steps (the step count of the MCM paper's teacher baseline, Table 1,
which uses aDDIM); each round halves them, down to S in the last: log2(256/S) + 1 rounds, 9 for
S = 1, 6 for S = 8. Budget: the MCM students' 200k iterations at batch 2048 (MCM paper section
5.1), split into equal rounds (`mcm.pd_round_steps` = 200000 // rounds: 22,222 for S = 1,
33,333 for S = 8; `training.num_steps` = rounds × that), so the comparison with the MCM rows is
at equal training budget. These are our choices, not the PD paper's published round lengths,
which this file does not restate. Loss: the PD paper's squared x-space error with its truncated
SNR weighting max(SNR, 1). Optimizer and EMA: the teacher's (Adam, learning rate 1e-4 after
1,000 warm-up steps, b2 0.99, clipping at norm 1, EMA 0.9999), restarted every round from the
previous round's EMA parameters.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.IMAGENET_PD_ARGS


def get_config(arg: str = ""):
    return presets.imagenet_pd(64, arg)
