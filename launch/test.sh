#!/usr/bin/env bash
# The test command: on a machine with only Python, creates .venv if missing, installs mcm_jax with
# its test extra, and runs the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
export JAX_PLATFORMS=cpu
export OPENBLAS_NUM_THREADS=1  # two pytest workers share two cores
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q tests "$@"
