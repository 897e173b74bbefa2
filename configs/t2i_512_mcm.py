"""Text-to-image Multistep Consistency Model at 512 px, distilled (CD) from the guided teacher
(paper §5.2, appendix A.1, Table 6).

    python -m mcm_jax.main --config=configs/t2i_512_mcm.py:steps=8,guidance=3 \
        --config.teacher.workdir=gs://BUCKET/mcm/t2i_512 \
        --config.data.data_dir=gs://BUCKET/captions_t5xxl --workdir=gs://BUCKET/mcm/t2i_512_s8_w3

Argument: `steps=S,guidance=W` (defaults 8 and 3). The paper distils students of 4, 8 and 16
steps from the teacher guided at w = 0.5 and w = 3 (x = x_cond + w (x_cond - x_uncond)), with
the teacher at a fixed 256 steps (no annealing), x_var = 0.75 ‖x_cond − x‖²/d from the teacher's
conditional prediction (not the guided one), pseudo-Huber c = 1 and 30k steps at batch 2048.
The consistency loss is multiscale like the teacher's (our reading, as for ImageNet128). Eval
samples the student's own S-step DDIM on `eval.prompts_dir`.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.T2I_MCM_ARGS


def get_config(arg: str = ""):
    return presets.t2i_mcm(arg)
