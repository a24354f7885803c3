#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try (and test) the submitit_slurm path.
#
#   sudo scripts/slurm-local.sh up       install slurm-wlm + munge if missing, write the config, start
#                                        munged, slurmctld and slurmd, wait until the node is idle
#   eval "$(scripts/slurm-local.sh env)" point sbatch/squeue/sinfo of this shell at it (SLURM_CONF)
#   sudo scripts/slurm-local.sh down     stop the three daemons (by their pid files); nothing keeps running
#   scripts/slurm-local.sh status        whether each daemon runs, and sinfo
#
# Everything lives under $CURVEBENCH_SLURM_DIR (default /tmp/curvebench-slurm): slurm.conf, the munge
# key and socket, state, spool, logs, pid files. Nothing under /etc is touched. Both commands are
# idempotent: `up` on a running cluster only checks it, `down` on a stopped one does nothing.
# Root is needed (slurmd starts jobs as their users; munged and the daemons run as root here).
# Ports: $CURVEBENCH_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

DIR=${CURVEBENCH_SLURM_DIR:-/tmp/curvebench-slurm}
PORT=${CURVEBENCH_SLURM_PORT:-6817}
PARTITION=${CURVEBENCH_SLURM_PARTITION:-cpu}
CONF=$DIR/etc/slurm.conf
SOCKET=$DIR/munge/munge.socket.2
NODE=$(hostname -s)

log() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 2; }

pid_of() {  # the pid in pid file $1 when that process runs, else nothing
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurmctld, slurmd, munged or sbatch is missing and there is no apt-get; install SLURM and munge"
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  mkdir -p "$DIR"/etc "$DIR"/munge "$DIR"/state "$DIR"/spool "$DIR"/log "$DIR"/run
  chmod 0700 "$DIR"/munge
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 0400 "$DIR/munge/munge.key"
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat >"$CONF.tmp" <<EOF
# written by scripts/slurm-local.sh: one node ($NODE), one partition ($PARTITION)
ClusterName=curvebench
SlurmctldHost=$NODE
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may start again after 10 s (the default is 120 s)
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start() {
  local pid
  if ! pid_of "$DIR/run/munged.pid" >/dev/null; then
    munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/run/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  fi
  if ! pid_of "$DIR/run/slurmctld.pid" >/dev/null; then
    slurmctld -c -f "$CONF"  # -c: a fresh cluster, no jobs left from an earlier `up`
  fi
  if ! pid_of "$DIR/run/slurmd.pid" >/dev/null; then
    slurmd -f "$CONF" -N "$NODE"
  fi
  for _ in $(seq 1 120); do  # up to 60 s
    if [ "$(SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o %T 2>/dev/null)" = idle ]; then
      for name in munged slurmctld slurmd; do
        pid=$(pid_of "$DIR/run/$name.pid") || die "$name did not start (log: $DIR/log/$name.log)"
      done
      log "node $NODE idle in partition $PARTITION; export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  SLURM_CONF=$CONF sinfo -N >&2 || true
  tail -n 5 "$DIR"/log/*.log >&2 || true
  die "the node did not become idle within 60 s (logs under $DIR/log)"
}

stop() {
  local name pid jobs stopped=""
  if pid_of "$DIR/run/slurmctld.pid" >/dev/null; then  # cancel this cluster's jobs first, by id
    jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 60); do
        [ -z "$(SLURM_CONF=$CONF squeue -h -o %A -t PD,R,CG,S 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  for name in slurmd slurmctld munged; do
    pid=$(pid_of "$DIR/run/$name.pid") || continue
    kill "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$name.pid"
    stopped="$stopped $name"
  done
  if [ -n "$stopped" ]; then log "stopped$stopped"; else log "nothing was running"; fi
}

case "${1:-}" in
  up)
    [ "$(id -u)" = 0 ] || die "run it as root (e.g. sudo $0 up)"
    install_packages
    if pid_of "$DIR/run/munged.pid" >/dev/null && pid_of "$DIR/run/slurmctld.pid" >/dev/null \
       && pid_of "$DIR/run/slurmd.pid" >/dev/null; then
      start  # already running: only wait for (and report) the idle node
    else
      write_config
      start
    fi
    ;;
  down)
    stop
    ;;
  env)
    echo "export SLURM_CONF=$CONF"
    ;;
  status)
    for name in munged slurmctld slurmd; do
      if pid=$(pid_of "$DIR/run/$name.pid"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
    done
    [ -f "$CONF" ] && SLURM_CONF=$CONF sinfo 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 up|down|env|status" >&2
    exit 2
    ;;
esac
