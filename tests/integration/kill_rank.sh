#!/bin/bash
# CTest: a rank that dies (kill -9) or stops answering (SIGSTOP: alive but stuck, which the launcher
# cannot see) in the middle of training must end the job: every other rank exits within the bound
# (the communication timeout plus launch slack) and the log names the cause. Never a hang.
#   kill_rank.sh WORKER MPIRUN kill|stop|partition TIMEOUT_S [two-hosts]
# With "two-hosts" the job runs across two network namespaces (two_hosts.sh) and the victim is the
# rank in the second one. "partition" (two-hosts only) takes the link between the hosts down: both
# ranks stay alive but cannot reach each other, nor can the launcher reach the second host; every
# rank must then end itself through the timeout.
set -u
worker=$1 mpiexec=$2 mode=$3 timeout_s=$4 where=${5:-local}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/ddp_kill_rank.XXXXXX)
mpid=""
cleanup() {
  for f in "$dir"/rank*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  if [ -n "$mpid" ]; then
    kill -TERM "$mpid" 2>/dev/null  # two_hosts.sh removes its namespaces on TERM
    sleep 1
    kill -9 "$mpid" 2>/dev/null
  fi
  wait 2>/dev/null
  if [ -f "$dir/hosts.info" ]; then
    . "$dir/hosts.info"
    ip netns del "$ns1" 2>/dev/null
    ip netns del "$ns2" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

args="--model mlp --steps 1000000 --global-batch 12 --sleep-ms 20 --timeout $timeout_s --pid-dir $dir"
if [ "$where" = two-hosts ]; then
  np=2 victim=1
  TWO_HOSTS_INFO="$dir/hosts.info" "$here/two_hosts.sh" --mpirun "$mpiexec" -- "$worker" $args > "$dir/log" 2>&1 &
else
  np=3 victim=1
  "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -np $np --mca btl_vader_single_copy_mechanism none \
    "$worker" $args > "$dir/log" 2>&1 &
fi
mpid=$!

# Wait until every rank has done a few steps.
for _ in $(seq 1 600); do
  ok=1
  for r in $(seq 0 $((np - 1))); do
    s=$(cat "$dir/rank$r.step" 2>/dev/null || echo -1)
    [ "$s" -ge 3 ] 2>/dev/null || ok=0
  done
  [ $ok = 1 ] && break
  if ! kill -0 $mpid 2>/dev/null; then
    wait $mpid; rc=$?
    cat "$dir/log"
    [ "$where" = two-hosts ] && [ $rc = 77 ] && exit 77
    echo "FAIL: the job ended (rc $rc) before the fault was injected"; exit 1
  fi
  sleep 0.1
done
[ $ok = 1 ] || { cat "$dir/log"; echo "FAIL: ranks did not reach step 3"; exit 1; }

vpid=$(cat "$dir/rank$victim.pid")
others=""
for r in $(seq 0 $((np - 1))); do [ $r != $victim ] && others="$others $(cat "$dir/rank$r.pid")"; done
alive() {  # running and not a zombie
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
t0=$(date +%s.%N)
if [ "$mode" = partition ]; then
  [ "$where" = two-hosts ] || { echo "FAIL: partition needs two-hosts"; exit 2; }
  . "$dir/hosts.info"
  # Both ranks are the ones that must end by themselves.
  others="$others $vpid"
  echo "kill_rank: taking the link down between the hosts at step $(cat "$dir/rank$victim.step")"
  ip -n "$ns2" link set "$if2" down
else
  signal=KILL; [ "$mode" = stop ] && signal=STOP
  echo "kill_rank: sending SIG$signal to rank $victim (pid $vpid) at step $(cat "$dir/rank$victim.step")"
  kill -$signal "$vpid"
fi

bound=$(awk -v t="$timeout_s" 'BEGIN { print t + 20 }')
gone=0
while :; do
  left=0
  for p in $others; do alive "$p" && left=1; done
  [ $left = 0 ] && { gone=1; break; }
  el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  awk -v e="$el" -v b="$bound" 'BEGIN { exit !(e > b) }' && break
  sleep 0.1
done
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
# A stopped victim is the launcher's to reap once the others aborted; make sure it goes.
kill -9 "$vpid" 2>/dev/null
for _ in $(seq 1 100); do kill -0 $mpid 2>/dev/null || break; sleep 0.1; done
# A launcher cut off from a host may never return; TERM lets two_hosts.sh clean up its namespaces.
if kill -0 $mpid 2>/dev/null; then
  kill -TERM $mpid
  for _ in $(seq 1 50); do kill -0 $mpid 2>/dev/null || break; sleep 0.1; done
  kill -0 $mpid 2>/dev/null && kill -9 $mpid
fi
wait $mpid; rc=$?
mpid=""
cat "$dir/log"
echo "kill_rank: mode=$mode others gone=$gone after ${elapsed}s (bound ${bound}s), mpirun rc=$rc"
[ $gone = 1 ] || { echo "FAIL: surviving ranks still running after ${bound}s"; exit 1; }
[ $rc != 0 ] || { echo "FAIL: the job exited 0 although a rank died"; exit 1; }
if [ "$mode" = stop ] || [ "$mode" = partition ]; then
  # The launcher cannot see a stopped process: only our timeout can end this job.
  grep -q "no answer from the other ranks within $timeout_s s" "$dir/log" || { echo "FAIL: no timeout message"; exit 1; }
else
  # Either our timeout/error message, or the launcher's report of the dead process.
  grep -Eq "no answer from the other ranks|MPI error in|exited on signal 9|noticed that process rank" "$dir/log" \
    || { echo "FAIL: the log does not name the cause"; exit 1; }
fi
echo "PASS"
