#!/usr/bin/env bash
# Runs an mcm_jax config on a Cloud TPU VM or pod slice: create it, install this package on every
# worker, run `python -m mcm_jax.main` on all workers at once, delete it. See usage below.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] create|setup|run|delete|all [-- main.py flags...]

  create   create the TPU VM (gcloud compute tpus tpu-vm create)
  setup    copy this checkout (or clone --repo) to every worker, install it in ~/mcm_jax/.venv
  run      run python -m mcm_jax.main on every worker (needs --config and --workdir)
  delete   delete the TPU VM
  all      create, setup, run; delete when run ends, also when it fails

Options (--option=value):
  --name=NAME              TPU VM name                        (default: mcm-$USER)
  --zone=ZONE              zone                               (default: us-central2-b)
  --accelerator-type=TYPE  v4-8, v4-64, v5litepod-16, ...     (default: v4-8)
  --version=RUNTIME        TPU software version               (default: tpu-ubuntu2204-base)
  --project=PROJECT        GCP project                        (default: gcloud's)
  --spot                   create a Spot VM (preemptible; rerun `run` to resume)
  --repo=URL               git clone URL instead of copying this checkout
  --ref=REF                branch, tag or commit of --repo    (default: main)
  --python=VERSION         Python for the workers' venv (uv)  (default: 3.11)
  --config=FILE[:ARGS]     config, e.g. configs/imagenet64_mcm.py:steps=8,method=cd
  --workdir=DIR            run directory, e.g. gs://BUCKET/mcm/run1
  --data-dir=DIR           TFDS data_dir, e.g. gs://BUCKET/tensorflow_datasets
  --mode=train|eval        (default: train)
  --dry-run                print the commands instead of running them
  -h, --help               this text
Flags after `--` go to mcm_jax.main, e.g. -- --config.teacher.workdir=gs://BUCKET/mcm/teacher

Example:
  launch/tpu_vm.sh --name=in64 --accelerator-type=v4-64 --config=configs/imagenet64_diffusion.py \
    --workdir=gs://BUCKET/mcm/in64_teacher --data-dir=gs://BUCKET/tensorflow_datasets all
EOF
}

NAME="mcm-${USER:-user}"
ZONE="us-central2-b"
ACCELERATOR="v4-8"
RUNTIME="tpu-ubuntu2204-base"
PROJECT=""
SPOT=0
REPO=""
REF="main"
PYTHON_VERSION="3.11"
CONFIG=""
WORKDIR=""
DATA_DIR=""
MODE="train"
DRY_RUN=0
COMMAND=""
EXTRA=()

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR="${1#*=}" ;;
    --version=*) RUNTIME="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --python=*) PYTHON_VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --mode=*) MODE="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    create | setup | run | delete | all)
      [[ -z "$COMMAND" ]] || die "one command only, got '$COMMAND' and '$1'"
      COMMAND="$1"
      ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$COMMAND" ]] || { usage >&2; die "missing command: create, setup, run, delete or all"; }
[[ "$MODE" == train || "$MODE" == eval ]] || die "--mode must be train or eval, got '$MODE'"
if [[ "$COMMAND" == run || "$COMMAND" == all ]]; then
  [[ -n "$CONFIG" ]] || die "--config is required for '$COMMAND'"
  [[ -n "$WORKDIR" ]] || die "--workdir is required for '$COMMAND'"
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU=(gcloud compute tpus tpu-vm)
LOCATION=("--zone=$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=("--project=$PROJECT")

# Quotes a word for the shell, only where needed: single quotes keep the worker code readable.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command in a form that can be pasted into a shell.
show() {
  local word out=()
  for word in "$@"; do out+=("$(quote "$word")"); done
  echo "${out[*]}"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then show "$@"; else "$@"; fi
}

# Runs bash code on every worker.
on_workers() {
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"
}

# --- Code that runs on the workers (shipped with `declare -f`). ---

# Installs ~/mcm_jax into ~/mcm_jax/.venv with a uv-managed Python, plus the TPU jaxlib (libtpu)
# matching the jax version the package resolved to.
worker_install() {
  local python_version="$1" venv="$HOME/mcm_jax/.venv"
  python3 -m pip install --user --quiet --upgrade uv
  "$HOME/.local/bin/uv" venv --python "$python_version" "$venv"
  "$HOME/.local/bin/uv" pip install --python "$venv/bin/python" -e "$HOME/mcm_jax"
  local jax_version
  jax_version="$("$venv/bin/python" -c 'import jax; print(jax.__version__)')"
  "$HOME/.local/bin/uv" pip install --python "$venv/bin/python" "jax[tpu]==$jax_version"
}

# Runs mcm_jax.main. On a multi-host slice, every worker gets the process count, its index and the
# coordinator (worker 0) from the VM metadata, for main.py's explicit jax.distributed start.
worker_main() {
  local metadata="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
  local endpoints first hosts
  endpoints="$(curl -sf -H Metadata-Flavor:Google "$metadata/worker-network-endpoints")"
  IFS=, read -ra hosts <<<"$endpoints"
  if ((${#hosts[@]} > 1)); then
    first="${hosts[0]##*:}"  # entries are HOST or NAME:ID:IP
    JAX_NUM_PROCESSES="${#hosts[@]}"
    JAX_PROCESS_ID="$(curl -sf -H Metadata-Flavor:Google "$metadata/agent-worker-number")"
    JAX_COORDINATOR_ADDRESS="$first:8476"
    export JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_COORDINATOR_ADDRESS
  fi
  cd "$HOME/mcm_jax"
  exec .venv/bin/python -m mcm_jax.main "$@"
}

# --- Commands. ---

create() {
  local args=(--accelerator-type="$ACCELERATOR" --version="$RUNTIME")
  if ((SPOT)); then args+=(--spot); fi
  run "${TPU[@]}" create "$NAME" "${LOCATION[@]}" "${args[@]}"
}

setup() {
  local fetch
  if [[ -n "$REPO" ]]; then
    fetch="rm -rf ~/mcm_jax && git clone $(quote "$REPO") ~/mcm_jax && git -C ~/mcm_jax checkout $(quote "$REF")"
  else
    local tarball="${TMPDIR:-/tmp}/mcm_jax-$NAME.tar.gz"
    run tar -czf "$tarball" -C "$REPO_ROOT" --exclude=./.git --exclude=./.venv \
      --exclude=./.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude='./workdir*' --exclude=./slurm_logs .
    run "${TPU[@]}" scp "$tarball" "$NAME:mcm_jax.tar.gz" "${LOCATION[@]}" --worker=all
    if ! ((DRY_RUN)); then rm -f "$tarball"; fi
    fetch="rm -rf ~/mcm_jax && mkdir ~/mcm_jax && tar -xzf ~/mcm_jax.tar.gz -C ~/mcm_jax"
  fi
  on_workers "set -euo pipefail; $fetch; $(declare -f worker_install); worker_install $(quote "$PYTHON_VERSION")"
}

main_flags() {
  local flags=(--config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE")
  [[ -z "$DATA_DIR" ]] || flags+=(--config.data.data_dir="$DATA_DIR")
  flags+=("${EXTRA[@]}")
  show "${flags[@]}"
}

run_config() {
  on_workers "set -euo pipefail; $(declare -f worker_main); worker_main $(main_flags)"
}

delete() {
  run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run_config ;;
  delete) delete ;;
  all)
    create
    trap delete EXIT
    setup
    run_config
    ;;
esac
