#!/usr/bin/env bash
# Submits an mcm_jax config to a SLURM GPU cluster: writes a batch script that starts one task per
# GPU on every node with srun, and submits it with sbatch. See usage below.
#
# One task per GPU because jax.distributed.initialize() maps each SLURM task to GPU
# $SLURM_LOCALID of its node; main.py calls it when SLURM_NTASKS > 1.
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
  --dry-run                print the batch script and the sbatch command instead of submitting
  -h, --help               this text
Flags after `--` go to mcm_jax.main, e.g. -- --config.teacher.workdir=/shared/mcm/teacher

The job receives SIGTERM 5 minutes before its time limit; the trainer then checkpoints and
exits, and submitting the same command again resumes in the same workdir.

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
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --signal=TERM@300"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  local arg
  for arg in "${SBATCH_EXTRA[@]}"; do echo "#SBATCH $arg"; done
  echo "set -euo pipefail"
  echo "cd $(quote "$REPO_ROOT")"
  echo "srun --kill-on-bad-exit=1 $(words "${main[@]}")"
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
