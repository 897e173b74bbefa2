#!/usr/bin/env bash
# The main job, on a CPU: sets up .venv if missing, trains a diffusion teacher on the bundled
# digits, distils multistep consistency students (CD for S = 1, 2, 4, 8; CT for S = 8), evaluates
# FD-digits and class accuracy for each and for the teacher (DDIM and aDDIM), and prints a table;
# results.png shows the teacher's and the CD students' samples from the same noise. One line per
# stage with the time left; library logs go to <workdir>/main_job.log.
# Options go to mcm_jax.experiments.main_job: --workdir=DIR (default /tmp/mcm_local), --quick (tiny network,
# a few steps: a path check), --teacher_steps=N, --student_steps=N, --samples=N, --model=digits|tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/venv.sh
source launch/venv.sh
# TF_ENABLE_ONEDNN_OPTS=0: TensorFlow only decodes and batches images here; it silences a C++ notice.
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0
exec .venv/bin/python -m mcm_jax.experiments.main_job "$@"
