#!/usr/bin/env bash
# A single-node Slurm cluster in one folder, for trying scripts/slurm/distortion.sh and for CI.
#
#   scripts/slurm/local-cluster.sh start DIR    # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm/local-cluster.sh stop DIR
#
# Needs root and Debian's `slurm-wlm` and `munge` packages (Slurm 22.05 on bookworm); no
# systemd. `start` writes DIR/slurm.conf (this node's real CPUs and memory, from `slurmd -C`;
# free ports; state, spool, logs and pid files under DIR), creates a munge key, runs `munged`
# as the `munge` user on its own socket, starts `slurmctld -c` and `slurmd`, and waits until
# the node is idle. Nothing outside DIR is touched, so it does not disturb a Slurm or munge
# already installed on the host. `stop` shuts down the daemons it started (by their pid files).
set -euo pipefail

die() { printf 'local-cluster.sh: %s\n' "$*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pid() { # PIDFILE NAME
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      printf 'local-cluster.sh: %s (pid %s) did not stop on TERM: killing it\n' "$2" "$pid" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$1"
}

start() {
  local dir=$1
  [ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as their users; munged as 'munge')"
  for b in munged slurmctld slurmd sbatch sinfo; do
    command -v "$b" >/dev/null || die "$b not found: apt-get install slurm-wlm munge"
  done
  id munge >/dev/null 2>&1 || die "no 'munge' user: apt-get install munge"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # The munge user must reach its folder; munged refuses group- or world-writable paths.
  chmod 0755 "$dir"
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  # The key stays readable by munge only; clients need to reach the socket's folder.
  chown munge:munge "$dir/munge"
  chmod 0755 "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chown munge:munge "$dir/munge/munge.key"
  chmod 0400 "$dir/munge/munge.key"
  runuser -u munge -- munged \
    --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"

  local node cpus mem ctld_port slurmd_port
  node=$(hostname -s)
  # This node's real hardware, as slurmd itself sees it.
  local hw
  hw=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from 'slurmd -C': $hw"
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm/local-cluster.sh: a single-node cluster in $dir.
ClusterName=knapsec
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=3600
SchedulerParameters=sched_interval=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -c -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    case "$state" in idle | idle\* | mixed | allocated) break ;; esac
    sleep 0.1
  done
  case "$state" in
    idle) ;;
    *) die "the node did not become idle (state '$state'); logs in $dir/log" ;;
  esac
  printf 'export SLURM_CONF=%s\n' "$SLURM_CONF"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
    SLURM_CONF=$dir/slurm.conf timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop_pid "$dir/slurmd.pid" slurmd
  stop_pid "$dir/slurmctld.pid" slurmctld
  # Job step daemons of this cluster still finishing (they report to slurmd, now gone): they
  # carry this cluster's SLURM_CONF in their environment.
  local pid left
  for _ in $(seq 50); do
    left=$(stepds "$dir")
    [ -z "$left" ] && break
    sleep 0.1
  done
  for pid in $(stepds "$dir"); do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in $(stepds "$dir"); do kill -KILL "$pid" 2>/dev/null || true; done
  stop_pid "$dir/munge/munged.pid" munged
}

# The slurmstepd processes of the cluster in DIR.
stepds() {
  local pid
  for pid in $(pgrep -x slurmstepd || true); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$1/slurm.conf"; then
      printf '%s\n' "$pid"
    fi
  done
}

case "${1:-}" in
  start) start "${2:?usage: local-cluster.sh start DIR}" ;;
  stop) stop "${2:?usage: local-cluster.sh stop DIR}" ;;
  *) die "usage: local-cluster.sh start|stop DIR" ;;
esac
