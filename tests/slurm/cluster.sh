#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for tests/test_slurm.py and .ci/run.
#
#   tests/slurm/cluster.sh start    write configs, start munged, slurmctld, slurmd; wait for idle
#   tests/slurm/cluster.sh stop     cancel its jobs, stop the daemons it started (by PID), end
#                                   processes its jobs left behind (found by the cluster name in
#                                   their environment), remove the configs it wrote
#   tests/slurm/cluster.sh status   sinfo of the running test cluster
#
# Needs root and the Debian packages slurm-wlm and munge (22.05 on Debian 12). The config goes to
# the default path /etc/slurm/slurm.conf because the executor plugin's job step drops SLURM_CONF
# from the environment of `srun`. There is no accounting daemon (slurmdbd), so status queries
# must use squeue; MinJobAge keeps finished jobs visible to squeue and scontrol for an hour.
# Two fake GPUs (gres gpu on /dev/null and /dev/zero; slurmd 22.05 counts none from `Count=`
# alone) let GPU rules (--gpus=1) schedule on a machine without one.
#
# `start` prints one line starting with "CANNOT START:" and exits 3 when the cluster cannot be
# started here (not root, packages missing, a foreign SLURM config or daemon present); any other
# failure exits 1 after stopping whatever it had started.
set -euo pipefail

STATE=${SELFREPAIR_SLURM_STATE:-/tmp/selfrepair-slurm}
CONF_DIR=/etc/slurm
MARK="# written by selfrepair tests/slurm/cluster.sh (removed by its 'stop')"
PARTITION=${SELFREPAIR_SLURM_PARTITION_NAME:-debug}
NODE=$(hostname -s)
CLUSTER_NAME=selfrepair-test

cannot() { echo "CANNOT START: $*" >&2; exit 3; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
ours() { [ -f "$1" ] && grep -qF "$MARK" "$1"; }

pid_alive() {  # pid_alive PIDFILE NAME: the PID in PIDFILE is a running process called NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1  # a daemon may remove its PID file as it exits
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

stop_daemon() {  # stop_daemon PIDFILE NAME: SIGTERM, wait up to 20 s, then SIGKILL
    local pidfile=$1 name=$2 pid i
    if pid_alive "$pidfile" "$name"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do
            pid_alive "$pidfile" "$name" || break
            sleep 0.2
        done
        if pid_alive "$pidfile" "$name"; then
            echo "cluster.sh: $name ($pid) ignored SIGTERM, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

write_configs() {
    local cpus mem
    # The node as slurmd sees it, minus 10% of memory for the OS and the submitting Snakemake.
    cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=$((mem * 9 / 10))
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/log"
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: containers (gVisor, Docker) rarely allow them; memory is scheduled, not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MpiDefault=none
MailProg=/bin/true
NodeName=$NODE CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # Two fake GPUs so that GPU rules (--gpus=1) schedule on a CPU-only machine. slurmd 22.05
    # counts no gpu from `Count=` alone (nor with Flags=CountOnly): it wants one device file per
    # GPU, and any character device will do.
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARK
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null,/dev/zero
EOF
}

start_munge() {
    # Reuse a munged that already answers (a real installation); else start one as user munge.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "munged already running; using it"
        return
    fi
    [ -s /etc/munge/munge.key ] || cannot "no /etc/munge/munge.key (apt-get install -y munge)"
    install -d -o munge -g munge -m 0755 /run/munge "$STATE/munge"
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && { echo "started munged (pid $(cat "$STATE/munge/munged.pid"))"; return; }
        sleep 0.2
    done
    die "munged did not answer: $(tail -n 5 "$STATE/munge/munged.log" 2>/dev/null)"
}

wait_idle() {
    local state i
    for i in $(seq 120); do
        state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)
        case "$state" in
        idle) return 0 ;;
        down* | drain* | unknown*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE not idle after 60 s (state '$state'); slurmd log: $(tail -n 5 "$STATE/log/slurmd.log" 2>/dev/null)"
}

cmd_start() {
    [ "$(id -u)" = 0 ] || cannot "needs root to start slurmctld/slurmd (running as $(id -un))"
    local missing=()
    for bin in slurmctld slurmd munged munge sbatch squeue sinfo scontrol; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [ ${#missing[@]} = 0 ] || cannot "missing ${missing[*]} (apt-get install -y slurm-wlm munge)"
    if [ -e "$CONF_DIR/slurm.conf" ] && ! ours "$CONF_DIR/slurm.conf"; then
        cannot "$CONF_DIR/slurm.conf exists and was not written by this script; not touching a real cluster's config"
    fi
    if pid_alive "$STATE/slurmctld.pid" slurmctld; then
        echo "test cluster already running"; wait_idle; return
    fi
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        cannot "a slurmctld or slurmd not started by this script is running"
    fi
    trap 'echo "cluster.sh: start failed, stopping what was started" >&2; cmd_stop >&2' EXIT
    write_configs
    start_munge
    slurmctld -c   # -c: clear state left by an earlier run; daemonizes, writes its PID file
    slurmd
    wait_idle
    trap - EXIT
    echo "SLURM test cluster up: $(sinfo -h -N -o 'node %N, partition %P, %c CPUs, %m MB, gres %G, %T')"
}

job_processes() {  # PIDs of processes left by jobs of this cluster (they carry its name)
    local f pid
    for f in /proc/[0-9]*/environ; do
        pid=${f#/proc/}
        pid=${pid%/environ}
        if { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qx "SLURM_CLUSTER_NAME=$CLUSTER_NAME"; then
            echo "$pid"
        fi
    done
}

cmd_stop() {
    if pid_alive "$STATE/slurmctld.pid" slurmctld; then
        # Jobs of this throw-away cluster only: cancel them so no slurmstepd outlives slurmd.
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        sleep 1
    fi
    stop_daemon "$STATE/slurmd.pid" slurmd
    stop_daemon "$STATE/slurmctld.pid" slurmctld
    stop_daemon "$STATE/munge/munged.pid" munged
    # A cancelled job's batch process can outlive its job (seen under gVisor): end those too.
    local left
    left=$(job_processes)
    if [ -n "$left" ]; then
        echo "ending processes left by jobs: $(echo $left)"
        kill -TERM $left 2>/dev/null || true
        sleep 2
        left=$(job_processes)
        [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
    fi
    for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
        if ours "$f"; then rm -f "$f"; fi
    done
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) sinfo -N -o '%N %P %c %m %G %T' ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
