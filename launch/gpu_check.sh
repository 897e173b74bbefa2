#!/usr/bin/env bash
# The GPU check (python -m mcm_jax.benchmarks.gpu_check) in one command, for a GPU machine whose
# image has JAX, Flax, optax and orbax but no package index; README.md "Benchmark" says more.
#
#   launch/gpu_check.sh --prepare          # here, with network: wheels and commit into .whl/
#   launch/gpu_check.sh [FLAGS...]         # there, from the repository root (.whl/ carried)
#   launch/gpu_check.sh --dry_run          # on a CPU: tiny networks, small batches
#
# --prepare downloads the wheels the image lacks (ml_collections, pure Python; the check imports
# no TensorFlow and no clu) for Python 3.12 into .whl/ (git-ignored; under 1 MB) and writes the
# commit to .whl/COMMIT, for a copy of the tree without .git. A run installs .whl/*.whl, if any,
# into /tmp/mcm_jax_site without touching the image's packages, puts the repository on
# PYTHONPATH and runs the check with the other arguments. The table goes to stdout and the JSON
# to $OUT/gpu_check.json where OUT is set (else ./gpu_check.json); with --profile_dir=DIR the
# traces are also packed into $OUT/profile.tar.gz. PYTHON (default python3) is the interpreter;
# MCM_JAX_COMMIT, if set, names the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.whl

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  echo "Usage: launch/gpu_check.sh [--prepare | FLAGS of python -m mcm_jax.benchmarks.gpu_check]"
  exit 0
fi

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform any -d "$WHEELS" \
    "ml_collections>=1.0"
  git describe --always --dirty --abbrev=10 >"$WHEELS/COMMIT"
  echo "prepared $WHEELS:" "$WHEELS"/*
  exit 0
fi

# The commit: $MCM_JAX_COMMIT, else the one --prepare recorded (a copy of the tree sent to a
# device machine may carry a stale .git of its own), else git's.
commit=${MCM_JAX_COMMIT:-}
if [[ -z "$commit" && -f "$WHEELS/COMMIT" ]]; then
  commit="$(cat "$WHEELS/COMMIT") (from $WHEELS/COMMIT)"
fi
if [[ -z "$commit" ]] && git rev-parse --git-dir >/dev/null 2>&1; then
  commit=$(git describe --always --dirty --abbrev=10)
fi

site=/tmp/mcm_jax_site
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

out=${OUT:-.}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# A rerun on the same machine reuses compiled programs (compile s then shows the cache's time).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mcm_jax_compilation_cache}
# The share of device memory JAX preallocates: the t2i item searches for the deepest network that
# fits, so it gets nearly all of it (the check's JSON records the value used).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
status=0
"$PYTHON" -m mcm_jax.benchmarks.gpu_check --commit="${commit:-unknown}" \
  --json="$out/gpu_check.json" "$@" || status=$?

for arg in "$@"; do
  if [[ "$arg" == --profile_dir=* && -d "${arg#--profile_dir=}" ]]; then
    tar czf "$out/profile.tar.gz" -C "${arg#--profile_dir=}" .
    echo "traces: $out/profile.tar.gz"
  fi
done
exit "$status"
