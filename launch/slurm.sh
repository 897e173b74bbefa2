#!/usr/bin/env bash
# Submits an mcm_jax config to a SLURM cluster: writes a batch script that starts the tasks on every
# node with srun (one per GPU, or --ntasks-per-node on a CPU partition), and submits it with sbatch.
# See usage below.
#
# One task per GPU because jax.distributed.initialize() maps each SLURM task to GPU
# $SLURM_LOCALID of its node; main.py calls it inside an srun step with SLURM_NTASKS > 1.
# srun gets --cpus-per-task itself: since Slurm 22.05 it no longer inherits sbatch's, and a task
# with one core starves the GPU of input.
#
# Near the time limit SLURM sends SIGUSR1 to the batch shell only (--signal=B:USR1@MARGIN); the
# shell sends SIGTERM to the tasks with `scancel --signal=TERM JOBID`, which signals the job's
# steps but neither the batch shell nor srun (srun, given SIGTERM itself, would SIGKILL its tasks
# before they save), waits for srun, and with --requeue requeues the job. scancel, `scontrol
# requeue` and preemption send SIGTERM to the tasks themselves; the shell then only waits, so a
# cancelled job stays cancelled. A preemption with a grace time signals only the tasks: once they
# have exited, the shell finds the job's PreemptTime and requeues it.
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
  --gpus-per-node=G        GPUs per node, one task each; 0: a CPU partition, no GPU request
                                                                   (default: 8)
  --ntasks-per-node=T      tasks per node without GPUs             (default: 1; with GPUs: G)
  --cpus-per-task=C        CPU cores per task (input pipeline)     (default: 12)
  --time=HH:MM:SS          time limit                              (default: 48:00:00)
  --signal-margin=S        seconds before the time limit at which the tasks get SIGTERM to save
                           (SLURM may send it up to 60 s earlier)  (default: 300)
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

Files in LOG_DIR: NAME-JOBID.sbatch, the batch script as submitted; NAME-JOBID.out, the batch
script's log, one "=== job JOBID attempt A ..." section per attempt (a requeued job runs again
under the same id; A is SLURM_RESTART_COUNT); NAME-JOBID-attemptA-taskT.out, task T's log of
attempt A. Task 0 logs "starting at step 0" or "resuming from step N" and ends with "saved step N,
exiting for requeue" or "finished at step N".

Stopping: --signal-margin seconds before the time limit the tasks get SIGTERM; the trainer saves
the step all tasks agree on and exits 0. With --requeue the job then requeues itself and resumes
from that step under the same job id; without, submit the same command again. `scancel JOBID`
cancels the job; `scontrol requeue JOBID` requeues it. Both, like a preemption, send SIGTERM to
the tasks and give them KillWait seconds (SLURM's default: 30) to save before SIGKILL. Details,
and how to give the tasks more time: docs/launch.md, "SLURM clusters".

Example:
  launch/slurm.sh --nodes=4 --partition=gpu --config=configs/imagenet64_diffusion.py:size=small \
    --workdir=/shared/mcm/in64_teacher --data-dir=/shared/tensorflow_datasets --requeue
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG=""
WORKDIR=""
DATA_DIR=""
MODE="train"
NODES=1
GPUS_PER_NODE=8
NTASKS_PER_NODE=""
CPUS_PER_TASK=12
TIME="48:00:00"
SIGNAL_MARGIN=300
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
    --ntasks-per-node=*) NTASKS_PER_NODE="${1#*=}" ;;
    --cpus-per-task=*) CPUS_PER_TASK="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --signal-margin=*) SIGNAL_MARGIN="${1#*=}" ;;
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
[[ "$JOB_NAME" =~ ^[A-Za-z0-9_.+-]+$ ]] || die "--job-name may hold letters, digits and _.+- only, got '$JOB_NAME'"
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "--gpus-per-node must be an integer >= 0, got '$GPUS_PER_NODE'"
if ((GPUS_PER_NODE > 0)); then
  [[ -z "$NTASKS_PER_NODE" || "$NTASKS_PER_NODE" == "$GPUS_PER_NODE" ]] \
    || die "--ntasks-per-node: with GPUs there is one task per GPU (--gpus-per-node=$GPUS_PER_NODE)"
  NTASKS_PER_NODE=$GPUS_PER_NODE
fi
NTASKS_PER_NODE=${NTASKS_PER_NODE:-1}
for count in NODES NTASKS_PER_NODE CPUS_PER_TASK SIGNAL_MARGIN; do
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
  local srun=(srun --kill-on-bad-exit=1 --cpus-per-task="$CPUS_PER_TASK")
  echo "#!/bin/bash"
  echo "# shellcheck disable=SC2329  # on_usr1 and on_term are called by traps"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$NTASKS_PER_NODE"
  ((GPUS_PER_NODE == 0)) || echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo "#SBATCH --open-mode=append"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  local arg
  for arg in "${SBATCH_EXTRA[@]}"; do echo "#SBATCH $arg"; done
  ((REQUEUE == 0)) || echo "#SBATCH --requeue"
  echo "#SBATCH --signal=B:USR1@$SIGNAL_MARGIN"
  echo "set -uo pipefail"
  echo "cd $(quote "$REPO_ROOT") || exit 1"
  echo "requeue=$REQUEUE"
  echo "task_log=$(quote "$LOG_DIR")/\"\$SLURM_JOB_NAME-\$SLURM_JOB_ID-attempt\${SLURM_RESTART_COUNT:-0}-task\""
  cat <<'EOF'
echo "=== job $SLURM_JOB_ID attempt ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, $(date -u '+%F %T') UTC; task logs ${task_log}<T>.out ==="
now() { date -u '+%T'; }
warned=0 terminated=0 interrupted=0
on_usr1() {
  warned=1 interrupted=1
  echo "$(now) SIGUSR1 (time limit near, or preemption): SIGTERM to the tasks"
  scancel --signal=TERM "$SLURM_JOB_ID" || echo "$(now) scancel failed: the tasks get SIGTERM at the time limit"
}
on_term() {
  terminated=1 interrupted=1
  echo "$(now) SIGTERM: the job is cancelled, requeued or preempted; the tasks save and exit"
}
trap on_usr1 USR1
trap on_term TERM
EOF
  # shellcheck disable=SC2016  # expanded by the batch script
  echo "$(words "${srun[@]}")" '--output="${task_log}%t.out"' "$(words "${main[@]}")" '&'
  cat <<'EOF'
srun_pid=$!
while :; do  # a trapped signal ends `wait` early: wait again for srun itself
  interrupted=0 status=0
  wait "$srun_pid" || status=$?
  ((interrupted)) || break
done
end=$(grep -hoE 'saved step [0-9]+, exiting for requeue|finished at step [0-9]+' "${task_log}0.out" 2>/dev/null | tail -n 1)
if ((status < 0)); then  # bash loses the status of a child that exits while a trap runs
  echo "$(now) srun exited${end:+; task 0: $end}"
  [[ -n "$end" ]] && status=0 || status=1
else
  echo "$(now) srun exited with status $status${end:+; task 0: $end}"
fi
# A preemption with a grace time sends SIGTERM to the tasks only: the job would end as completed.
preempted() { scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -q 'PreemptTime=[0-9]'; }
if [[ "$end" != finished* ]] && { ((warned)) || { ((!terminated)) && preempted; }; }; then
  if ((requeue)); then
    echo "$(now) requeueing job $SLURM_JOB_ID: it resumes from the workdir's latest checkpoint"
    trap '' TERM  # the requeue sends SIGTERM to this shell and its children, scontrol included
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "$(now) scontrol requeue failed: submit the same command again to continue"
    exit 1
  fi
  echo "$(now) stopped early (time limit or preemption): submit the same command again to continue"
fi
exit "$status"
EOF
}

if ((DRY_RUN)); then
  batch_script
  echo "# submit with: sbatch --parsable FILE, then keep FILE as $(quote "$LOG_DIR/$JOB_NAME")-JOBID.sbatch"
  exit 0
fi
mkdir -p "$LOG_DIR"
script=$(mktemp "$LOG_DIR/.$JOB_NAME.sbatch.XXXXXX")
trap 'rm -f "$script"' EXIT
batch_script >"$script"
job_id=$(sbatch --parsable "$script") || die "sbatch failed (its message is above); nothing was submitted"
job_id=${job_id%%;*}  # --parsable prints JOBID[;CLUSTER]
mv "$script" "$LOG_DIR/$JOB_NAME-$job_id.sbatch"
trap - EXIT
echo "Submitted batch job $job_id"
echo "Batch script: $LOG_DIR/$JOB_NAME-$job_id.sbatch; logs: $LOG_DIR/$JOB_NAME-$job_id.out and" \
  "$LOG_DIR/$JOB_NAME-$job_id-attempt<A>-task<T>.out"
