#!/usr/bin/env bash
# Submits an mcm_jax config to a SLURM GPU cluster: writes a batch script that starts one task per
# GPU on every node with srun, and submits it with sbatch. See usage below.
#
# One task per GPU because jax.distributed.initialize() maps each SLURM task to GPU
# $SLURM_LOCALID of its node; main.py calls it inside an srun step with SLURM_NTASKS > 1.
# srun gets --cpus-per-task itself: since Slurm 22.05 it no longer inherits sbatch's, and a task
# with one core starves the GPU of input.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [options] [-- main.py flags...]

Options (--option=value):
  --config=FILE[:ARGS]     config, e.g. configs/imagenet64_mcm.py:steps=8,method=cd   (required)
  --workdir=DIR            run directory on a file system every node sees            (required)
  --data-dir=DIR           TFDS data_dir
  --mode=train|eval        (default: train)
  --nodes=N                nodes                                   (default: 1)
  --gpus-per-node=G        GPUs per node, one task each            (default: 8)
  --cpus-per-task=C        CPU cores per task (input pipeline)     (default: 12)
  --time=HH:MM:SS          time limit                              (default: 48:00:00)
  --partition=NAME         SLURM partition                         (default: the cluster's)
  --account=NAME           SLURM account                           (default: the user's)
  --job-name=NAME          (default: mcm)
  --sbatch=ARG             extra #SBATCH line, repeatable, e.g. --sbatch=--qos=high
  --python=PATH            Python with mcm_jax installed           (default: <repo>/.venv/bin/python)
  --log-dir=DIR            batch scripts and logs                  (default: <repo>/slurm_logs)
  --requeue                requeue the job at its time limit and on preemption or node failure
  --dry-run                print the batch script and the sbatch command instead of submitting
  -h, --help               this text
Flags after `--` go to mcm_jax.main, e.g. -- --config.teacher.workdir=/shared/mcm/teacher

Logs: LOG_DIR/NAME-JOBID.out for the batch script, LOG_DIR/NAME-JOBID-task<T>.out for each task
(appended to when a requeued job runs again).

The tasks receive SIGTERM 5 minutes before the time limit; the trainer then checkpoints and
exits, and submitting the same command again resumes in the same workdir. With --requeue the job
does that itself: the batch script forwards the SIGTERM to the tasks, waits for the checkpoint,
and requeues the job (`scontrol requeue`), which runs again with the same job id and workdir;
SLURM also requeues it after a preemption or a node failure.

Example:
  launch/slurm.sh --nodes=4 --partition=gpu --config=configs/imagenet64_diffusion.py:size=small \
    --workdir=/shared/mcm/in64_teacher --data-dir=/shared/tensorflow_datasets
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG=""
WORKDIR=""
DATA_DIR=""
MODE="train"
NODES=1
GPUS_PER_NODE=8
CPUS_PER_TASK=12
TIME="48:00:00"
PARTITION=""
ACCOUNT=""
JOB_NAME="mcm"
SBATCH_EXTRA=()
PYTHON="$REPO_ROOT/.venv/bin/python"
LOG_DIR="$REPO_ROOT/slurm_logs"
REQUEUE=0
DRY_RUN=0
EXTRA=()

die() {
  echo "slurm.sh: $*" >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --mode=*) MODE="${1#*=}" ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --cpus-per-task=*) CPUS_PER_TASK="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --job-name=*) JOB_NAME="${1#*=}" ;;
    --sbatch=*) SBATCH_EXTRA+=("${1#*=}") ;;
    --python=*) PYTHON="${1#*=}" ;;
    --log-dir=*) LOG_DIR="${1#*=}" ;;
    --requeue) REQUEUE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$MODE" == train || "$MODE" == eval ]] || die "--mode must be train or eval, got '$MODE'"
for count in NODES GPUS_PER_NODE CPUS_PER_TASK; do
  [[ "${!count}" =~ ^[1-9][0-9]*$ ]] || die "--$(tr '_A-Z' '-a-z' <<<"$count") must be a positive integer, got '${!count}'"
done

# Quotes a word for the shell, only where needed.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

words() {
  local word out=()
  for word in "$@"; do out+=("$(quote "$word")"); done
  echo "${out[*]}"
}

batch_script() {
  local main=("$PYTHON" -m mcm_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE")
  [[ -z "$DATA_DIR" ]] || main+=(--config.data.data_dir="$DATA_DIR")
  main+=("${EXTRA[@]}")
  local srun=(srun --kill-on-bad-exit=1 --cpus-per-task="$CPUS_PER_TASK"
    --output="$LOG_DIR/%x-%j-task%t.out" --open-mode=append)
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo "#SBATCH --open-mode=append"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  local arg
  for arg in "${SBATCH_EXTRA[@]}"; do echo "#SBATCH $arg"; done
  if ((REQUEUE)); then
    echo "#SBATCH --requeue"
    echo "#SBATCH --signal=B:TERM@300"
  else
    echo "#SBATCH --signal=TERM@300"
  fi
  echo "set -euo pipefail"
  echo "cd $(quote "$REPO_ROOT")"
  if ((REQUEUE)); then
    # Only the batch shell gets the SIGTERM: srun forwards it to the tasks, which checkpoint and
    # exit; then the job requeues itself.
    cat <<'EOF'
requeue=0
trap 'requeue=1; kill -TERM "$srun_pid"' TERM
EOF
    echo "$(words "${srun[@]}" "${main[@]}") &"
    cat <<'EOF'
srun_pid=$!
status=0
wait "$srun_pid" || status=$?
if ((requeue)); then
  wait "$srun_pid" || true
  echo "SIGTERM (time limit or preemption): tasks checkpointed; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
EOF
  else
    words "${srun[@]}" "${main[@]}"
  fi
}

if ((DRY_RUN)); then
  batch_script
  echo "# submit with: sbatch $(quote "$LOG_DIR/$JOB_NAME.sbatch")"
else
  mkdir -p "$LOG_DIR"
  script="$LOG_DIR/$JOB_NAME.sbatch"
  batch_script >"$script"
  sbatch "$script"
fi
