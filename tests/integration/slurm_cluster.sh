# Sourced by the Slurm tests (slurm_train.sh, slurm_requeue.sh): a real one-node Slurm on this
# machine, munged, slurmctld and slurmd with a generated slurm.conf, all in a temp dir $T with ports of
# its own; cleaned up at exit. Defines skip and wait_job; exports SLURM_CONF. CRED_EXPIRE=S, set before
# sourcing, shortens the credential lifetime (default 120 s), which is also how long a requeued job
# waits before it starts again; SCHED_INTERVAL=S how often the scheduler looks at pending jobs
# (default 60 s), such as a requeued one whose wait is over.
# Exit 77 (CTest: skipped) where Slurm or munge is not installed or cannot start here.
# shellcheck shell=bash
skip() { echo "SKIP: $*"; exit 77; }
for c in munged slurmctld slurmd sbatch squeue sacct scontrol; do command -v $c >/dev/null || skip "$c not installed (tools/setup installs slurm-wlm and munge)"; done
[[ $(id -u) -eq 0 ]] || skip "needs root (slurmd runs jobs as their user)"

T=$(mktemp -d /tmp/ddp_slurm.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() {
  scontrol -f "$T/slurm.conf" shutdown >/dev/null 2>&1 || true
  sleep 1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -f $T/munged.pid ]]; then kill "$(cat "$T/munged.pid")" 2>/dev/null || true; fi
  sleep 1
  rm -rf "$T"
}
trap cleanup EXIT

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p "$T"/{state,spool,munge,log,run,work}
chmod 700 "$T/munge"
# munge: a key of our own, its socket in the temp dir.
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
MUNGE_SOCK=$T/munge/munge.socket
munged --key-file="$T/munge/munge.key" --socket="$MUNGE_SOCK" --pid-file="$T/munged.pid" \
  --log-file="$T/log/munged.log" --seed-file="$T/munge/seed" -f 2>"$T/log/munged.err" \
  || skip "munged does not start here: $(cat "$T/log/munged.err")"

cat >"$T/slurm.conf" <<CONF
ClusterName=ddptest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK${CRED_EXPIRE:+,cred_expire=$CRED_EXPIRE}
CredType=cred/munge
SlurmctldPort=$((6900 + RANDOM % 500))
SlurmdPort=$((7500 + RANDOM % 500))
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
${SCHED_INTERVAL:+SchedulerParameters=sched_interval=$SCHED_INTERVAL}
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=30 State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$T/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$T/log/ctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/log/d.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
  [[ $(sinfo -h -o %T 2>/dev/null) =~ idle|mixed ]] && break
  sleep 1
done
[[ $(sinfo -h -o %T 2>/dev/null) =~ idle|mixed ]] || { tail -20 "$T"/log/*; skip "slurmctld/slurmd did not come up here"; }

# wait_job JOBID: waits (up to 300 s) until the job has ended; prints its state.
wait_job() {
  local j=$1 s=""
  for _ in $(seq 1 300); do
    s=$(scontrol show job "$j" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    [[ $s =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]] && break
    sleep 1
  done
  echo "$s"
}
