"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) on the bundled digits, from a
digits teacher: the baseline beside configs/digits_mcm.py.

    python -m mcm_jax.main --config=configs/digits_pd.py:steps=4 \
        --config.teacher.workdir=/tmp/digits_teacher --workdir=/tmp/digits_pd_s4

Argument: `steps=S,model=digits|tiny` (defaults 8, digits). Rounds halve the student's sampling
steps from 32 (its teacher: the diffusion model at 64 DDIM steps, the digits CD students' first
teacher steps) down to S: log2(32/S) + 1 rounds, 6 for S = 1 and 3 for S = 8. Budget: the digits
MCM students' 1,500 iterations at batch 128, split into equal rounds (`mcm.pd_round_steps` =
1500 // rounds: 250 for S = 1, 500 for S = 8; `training.num_steps` = rounds × that), so PD and
MCM rows compare at the same training budget (our choice: the PD paper has no digits run).
Loss: squared x-space error with the PD paper's truncated SNR weighting max(SNR, 1)
(docs/method.md §10). Optimizer as the digits MCM students (learning
rate 2e-4 after 50 warm-up steps), restarted every round.
"""

from mcm_jax.config import presets

# The values the argument takes (the first is the default); `runlocal` is added to any of them.
ARGUMENTS = presets.DIGITS_PD_ARGS


def get_config(arg: str = ""):
    return presets.digits_pd(arg)
