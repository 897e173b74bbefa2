#!/usr/bin/env bash
# A one-node SLURM cluster from Debian's packages, for tests/test_slurm_cluster.py and by hand:
#
#   tests/slurm/cluster.sh install      apt-get install munge and slurm-wlm if missing; exit
#                                       status 77 where no cluster can run (not root, no apt-get)
#   tests/slurm/cluster.sh start DIR    config, state and logs in DIR; munged, slurmctld and slurmd
#                                       started as daemons; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/cluster.sh stop DIR     cancels every job, waits for it to end, stops the daemons
#
# Everything of one cluster lives in DIR: its munge key and socket, free TCP ports, spool and state
# directories, pid and log files; nothing in /etc is read or changed, so it neither needs nor
# disturbs a system cluster. Clients find it through SLURM_CONF. Everything runs as root, which is
# why munged may keep its socket in a directory only root can enter (--force). No systemd and no
# cgroups (as in a container): processes are tracked by their parent (proctrack/linuxproc). The
# node is `localhost` (whatever the machine's name, so the tasks' jax.distributed coordinator
# address resolves) with 2 CPUs whatever it has (SlurmdParameters=config_overrides). KillWait is
# SLURM's default, 30 s; pending jobs are looked at every 2 s (sched_interval; default 60 s);
# finished jobs stay visible to `scontrol show job` for MinJobAge = 600 s.
set -euo pipefail

die() {
  echo "cluster.sh: $*" >&2
  exit 2
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Exit status 77 (as automake's skip): no cluster can run here (not root: slurmd and the jobs run
# as root), or the packages are missing and there is no apt-get to install them.
install() {
  if [[ $(id -u) != 0 ]]; then
    echo "cluster.sh: a SLURM cluster needs root (slurmd starts the jobs as root)" >&2
    exit 77
  fi
  if command -v munged && command -v slurmctld && command -v slurmd && command -v sbatch; then
    return 0
  fi >/dev/null
  if ! command -v apt-get >/dev/null; then
    echo "cluster.sh: munge and slurm-wlm are not installed, and there is no apt-get" >&2
    exit 77
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends munge slurm-wlm >/dev/null
}

write_config() {
  local dir=$1
  mkdir -p "$dir"/{munge,state,spool}
  chmod 700 "$dir/munge"
  # munged wants a key of its user, readable by no one else.
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=mcmtest
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() {
  [[ "$(sinfo -h -N -o %t)" == idle ]]
}

start() {
  local dir
  dir=$(realpath -m "$1")
  [[ ! -s "$dir/slurmctld.pid" ]] || die "$dir holds a running cluster: stop it first"
  write_config "$dir"
  export SLURM_CONF="$dir/slurm.conf"
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N localhost
  if ! wait_for 60 node_idle; then
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    die "the node did not come up within 60 s (logs above)"
  fi
  echo "export SLURM_CONF=$SLURM_CONF"
}

# Sends SIGTERM to the daemon in pid file $1, SIGKILL after 10 s.
stop_daemon() {
  local pid
  [[ -s "$1" ]] || return 0
  pid=$(<"$1")
  if kill -TERM "$pid" 2>/dev/null && ! wait_for 10 is_gone "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

is_gone() {
  ! kill -0 "$1"
}

no_jobs() {
  [[ -z "$(squeue -h -o %i)" ]]
}

stop() {
  local dir jobs
  dir=$(realpath -m "$1")
  export SLURM_CONF="$dir/slurm.conf"
  if [[ -s "$dir/slurmctld.pid" ]] && jobs=$(squeue -h -o %i) && [[ -n "$jobs" ]]; then
    # Every job ends before slurmd does, so no task outlives the cluster (KillWait: 30 s).
    # shellcheck disable=SC2086  # one job id per word
    scancel $jobs || true
    wait_for 60 no_jobs || echo "cluster.sh: jobs still listed after 60 s: $(squeue -h -o %i)" >&2
  fi
  stop_daemon "$dir/slurmd.pid"
  stop_daemon "$dir/slurmctld.pid"
  stop_daemon "$dir/munge/munged.pid"
}

case "${1:-}" in
  install) install ;;
  start) [[ $# == 2 ]] || die "usage: cluster.sh start DIR"; start "$2" ;;
  stop) [[ $# == 2 ]] || die "usage: cluster.sh stop DIR"; stop "$2" ;;
  *) die "usage: cluster.sh install | start DIR | stop DIR" ;;
esac
