#!/usr/bin/env bash
# The test command: on a machine with only Python, creates .venv with mcm_jax and its test extra
# (launch/venv.sh: only when .venv is missing or setup.py changed) and runs the test suite on the
# CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/venv.sh
source launch/venv.sh
export JAX_PLATFORMS=cpu
export OPENBLAS_NUM_THREADS=1  # two pytest workers share two cores
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q tests "$@"
