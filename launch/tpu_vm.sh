#!/usr/bin/env bash
# Runs an mcm_jax config on a Cloud TPU VM or pod slice for as long as it takes: create it (plain
# or as a queued resource), install this package on every worker, start `python -m mcm_jax.main`
# detached on all workers, follow or stop it, and recreate the slice after a spot preemption.
# See usage below.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] COMMAND [-- main.py flags...]

Commands:
  create   create the slice and wait until it is ready: a queued resource for --spot, --reserved
           and v5e/v5p/v6e slices (gcloud compute tpus queued-resources create), else a plain
           TPU VM (gcloud compute tpus tpu-vm create, v4 on demand)
  setup    copy this checkout (or clone --repo) to every worker, install it in ~/mcm_jax/.venv
  run      end stale processes holding the TPU, then start python -m mcm_jax.main on every worker,
           detached (it survives this terminal); each worker logs to ~/mcm_jax/logs/worker-N.log,
           copied to WORKDIR/logs/ every 5 minutes and at the end (needs --config and --workdir)
  logs     follow the log of worker --worker (default 0) until the run ends
  stop     send SIGTERM to the run on every worker: it saves a checkpoint and exits
  delete   delete the slice (and its queued resource)
  resume   after a spot preemption (state PREEMPTED): delete, create, setup and run into the same
           workdir, which resumes from its last checkpoint
  all      create, setup, run, follow worker 0's log; delete the slice when the run has ended

Options (--option=value):
  --name=NAME              TPU name (also the queued resource's) (default: mcm-$USER)
  --zone=ZONE              zone                               (default: us-central2-b)
  --accelerator-type=TYPE  v4-8, v5litepod-64, v5p-64, v6e-16, ...  (default: v4-8)
  --version=RUNTIME        TPU software version (default from the type: v4 tpu-ubuntu2204-base,
                           v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --project=PROJECT        GCP project                        (default: gcloud's)
  --spot                   Spot capacity (queued resource; preemptible: see `resume`)
  --reserved               reserved capacity (queued resource)
  --worker=N|all           worker whose log `logs` follows     (default: 0)
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
Give delete and resume the same --accelerator-type, --spot and --reserved as create.

Example:
  launch/tpu_vm.sh --name=in64 --zone=us-west4-a --accelerator-type=v5litepod-64 --spot \
    --config=configs/imagenet64_diffusion.py --workdir=gs://BUCKET/mcm/in64_teacher \
    --data-dir=gs://BUCKET/tensorflow_datasets all
EOF
}

NAME="mcm-${USER:-user}"
ZONE="us-central2-b"
ACCELERATOR="v4-8"
RUNTIME=""
PROJECT=""
SPOT=0
RESERVED=0
WORKER=0
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
    --reserved) RESERVED=1 ;;
    --worker=*) WORKER="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --python=*) PYTHON_VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --mode=*) MODE="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    create | setup | run | logs | stop | delete | resume | all)
      [[ -z "$COMMAND" ]] || die "one command only, got '$COMMAND' and '$1'"
      COMMAND="$1"
      ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$COMMAND" ]] || { usage >&2; die "missing command: create, setup, run, logs, stop, delete, resume or all"; }
[[ "$MODE" == train || "$MODE" == eval ]] || die "--mode must be train or eval, got '$MODE'"
((SPOT + RESERVED < 2)) || die "--spot and --reserved exclude each other"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a worker number or all, got '$WORKER'"
if [[ "$COMMAND" == run || "$COMMAND" == resume || "$COMMAND" == all ]]; then
  [[ -n "$CONFIG" ]] || die "--config is required for '$COMMAND'"
  [[ -n "$WORKDIR" ]] || die "--workdir is required for '$COMMAND'"
fi

# The runtime (TPU software version) each generation needs, unless --version says otherwise.
if [[ -z "$RUNTIME" ]]; then
  case "$ACCELERATOR" in
    v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    *) die "no default runtime for --accelerator-type=$ACCELERATOR: give --version" ;;
  esac
fi
# Queued resources are how Spot, reserved and v5e/v5p/v6e slices are obtained; v4 on demand can
# still be created directly.
QUEUED=1
if [[ "$ACCELERATOR" == v4-* ]] && ((!SPOT && !RESERVED)); then QUEUED=0; fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
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

# Runs bash code on every worker (or on worker $2).
on_workers() {
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker="${2:-all}" --command="$1"
}

# --- Code that runs on the workers (shipped with `declare -f`). ---

# Installs ~/mcm_jax with its tpu extra (jax[tpu]: jaxlib and libtpu at the jax version the
# package resolves to), then launch/no-deps-requirements.txt without their declared dependencies,
# into ~/mcm_jax/.venv, with a uv-managed Python.
worker_install() {
  local python_version="$1" venv="$HOME/mcm_jax/.venv"
  python3 -m pip install --user --quiet --upgrade uv
  "$HOME/.local/bin/uv" venv --python "$python_version" "$venv"
  "$HOME/.local/bin/uv" pip install --python "$venv/bin/python" -e "$HOME/mcm_jax[tpu]"
  "$HOME/.local/bin/uv" pip install --python "$venv/bin/python" --no-deps \
    -r "$HOME/mcm_jax/launch/no-deps-requirements.txt"
}

# Ends whatever still holds the TPU (a previous run, a stuck process): SIGTERM, which lets a run
# checkpoint, then SIGKILL after 60 s. Removes libtpu's lock file, which otherwise makes the next
# process fail with "TPU in use".
worker_free_tpu() {
  local pids waited=0
  mapfile -t pids < <(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u)
  if ((${#pids[@]})); then
    echo "$(hostname): ending processes holding the TPU: ${pids[*]}"
    sudo kill -TERM "${pids[@]}" 2>/dev/null || true
    while ((waited < 60)) && ps -p "$(IFS=,; echo "${pids[*]}")" >/dev/null; do
      sleep 2
      ((waited += 2))
    done
    sudo kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  sudo rm -f /tmp/libtpu_lockfile
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

# Copies a log file into a directory: gs:// with gcloud storage, else a mounted path.
worker_copy_log() {
  case "$2" in
    gs://*) gcloud storage cp --quiet "$1" "$2/" ;;
    *) mkdir -p "$2" && cp "$1" "$2/" ;;
  esac
}

# Runs worker_main in the background with its output in ~/mcm_jax/logs/worker-N.log, records its
# process id in ~/mcm_jax/run.pid (for stop and logs), and copies the log to WORKDIR/logs every
# 5 minutes and once more when the run has ended.
worker_supervise() {
  local workdir="$1" id log pid polls=0 status=0
  shift
  id="$(curl -sf -H Metadata-Flavor:Google \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)"
  log="$HOME/mcm_jax/logs/worker-$id.log"
  echo "$(date -u +%FT%TZ) starting on $(hostname): mcm_jax.main $*" >>"$log"
  worker_main "$@" >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$HOME/mcm_jax/run.pid"
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((++polls % 150 == 0)); then worker_copy_log "$log" "$workdir/logs" || true; fi
  done
  wait "$pid" || status=$?
  echo "$(date -u +%FT%TZ) mcm_jax.main exited with status $status" >>"$log"
  worker_copy_log "$log" "$workdir/logs"
}

# --- Commands. ---

create() {
  local args=(--accelerator-type="$ACCELERATOR")
  if ((SPOT)); then args+=(--spot); fi
  if ((RESERVED)); then args+=(--reserved); fi
  if ((QUEUED)); then
    run "${QR[@]}" create "$NAME" "${LOCATION[@]}" --node-id="$NAME" --runtime-version="$RUNTIME" "${args[@]}"
    wait_active
  else
    run "${TPU[@]}" create "$NAME" "${LOCATION[@]}" --version="$RUNTIME" "${args[@]}"
  fi
}

# A queued resource waits for capacity (WAITING_FOR_RESOURCES, PROVISIONING) before it is ACTIVE.
wait_active() {
  local describe=("${QR[@]}" describe "$NAME" "${LOCATION[@]}" --format='value(state.state)')
  if ((DRY_RUN)); then show "${describe[@]}"; return; fi
  local state
  while true; do
    state="$("${describe[@]}")"
    case "$state" in
      ACTIVE) return ;;
      FAILED | SUSPENDED) die "queued resource $NAME is $state" ;;
    esac
    echo "queued resource $NAME: $state; checking again in 60 s" >&2
    sleep 60
  done
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

# Writes ~/mcm_jax/run.sh on every worker and starts it in a new session (setsid, nohup, no
# terminal), so the run outlives the ssh connection and this terminal.
run_config() {
  on_workers "set -euo pipefail
$(declare -f worker_free_tpu)
worker_free_tpu
mkdir -p ~/mcm_jax/logs
cat >~/mcm_jax/run.sh <<'MCM_RUN'
$(declare -f worker_main worker_copy_log worker_supervise)
worker_supervise $(quote "$WORKDIR") $(main_flags)
MCM_RUN
setsid nohup bash ~/mcm_jax/run.sh >/dev/null 2>&1 </dev/null &
echo \"\$(hostname): started, log in ~/mcm_jax/logs\""
}

logs() {
  on_workers "tail -n 200 -F --pid=\"\$(cat ~/mcm_jax/run.pid)\" ~/mcm_jax/logs/worker-*.log" "$WORKER"
}

stop() {
  on_workers "pid=\"\$(cat ~/mcm_jax/run.pid 2>/dev/null || true)\"
if [[ -n \"\$pid\" ]] && kill -TERM \"\$pid\" 2>/dev/null; then echo \"\$(hostname): SIGTERM sent to \$pid\"; fi"
}

delete() {
  if ((QUEUED)); then
    run "${QR[@]}" delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run_config ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  resume)
    delete || echo "tpu_vm.sh: nothing to delete, creating $NAME" >&2
    create
    setup
    run_config
    ;;
  all)
    create
    setup
    run_config
    WORKER=0 logs
    delete
    ;;
esac
