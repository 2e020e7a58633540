#!/bin/bash
# Overlap of gradient communication with backward, on the CPU ResNet18 (small images so a step is
# short): median step time with communication off, with buckets overlapped with backward, and with
# one bucket issued after backward; the allreduce of the whole gradient alone; and the share of
# communication hidden = 1 - (t_overlapped - t_off) / t_allreduce.
# Runs on one host (shared memory) and on two network-namespace hosts, unlimited and with the
# veth limited to 10 Gbit/s.
#   tools/bench/overlap.sh [BUILD_DIR] [ITERS] [BATCH_PER_RANK] [SIZE]    (defaults: build 5 8 32; SIZE >= 32)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
# need_int NAME VALUE MIN: VALUE a whole number >= MIN, or one line naming NAME and exit 2
need_int() { if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then echo "$(basename "$0"): $1 must be a whole number >= $3, got '$2'" >&2; exit 2; fi; }
case ${1:-} in -h|--help) usage; exit 0 ;; -*) echo "overlap.sh: unknown option '$1' (see --help)" >&2; exit 2 ;; esac
(($# <= 4)) || { echo "overlap.sh: at most 4 arguments (see --help)" >&2; exit 2; }
build=${1:-$root/build}
iters=${2:-5}
bpr=${3:-8}
size=${4:-32}
[ -d "$build" ] || { echo "overlap.sh: build directory '$build' does not exist" >&2; exit 2; }
need_int ITERS "$iters" 1
need_int BATCH_PER_RANK "$bpr" 1
need_int SIZE "$size" 32
worker=$build/tests/comm/ddp_test_worker
[ -x "$worker" ] || { echo "build the worker first: cmake --build $build --target ddp_test_worker" >&2; exit 2; }
threads=$(( $(nproc) / 2 )); [ $threads -lt 1 ] && threads=1
args="--model resnet18 --size $size --threads $threads --global-batch $((2 * bpr)) --bench-overlap $iters"
mpi="mpirun --allow-run-as-root --oversubscribe --bind-to none"
# only_results PATTERN: the worker's result lines; all of its output when it has none (an error)
only_results() {
  local out
  out=$(cat)
  grep -E "$1" <<<"$out" || { echo "overlap.sh: the run printed no result; its output:" >&2; printf '%s\n' "$out" >&2; }
}
echo "# machine: $(uname -n), $(nproc) cores; 2 ranks x $threads compute threads; batch $bpr per rank at ${size}px; $(date -u +%FT%TZ)"
for bb in 26214400 4194304; do
  echo "## one host, shared memory, bucket $bb bytes"
  $mpi -np 2 --mca btl self,vader --mca btl_vader_single_copy_mechanism none "$worker" $args --bucket-bytes $bb 2>&1 | only_results overlap
  echo "## two namespaces (veth, TCP), bucket $bb bytes"
  "$root/tests/integration/two_hosts.sh" -- "$worker" $args --bucket-bytes $bb 2>&1 | only_results "overlap|SKIP"
  # 10gbit is the AWS single-flow limit; 1gbit makes the wire, not this machine's CPU, the
  # bottleneck on a small CPU host (a veth here moves ~1 Gbit/s of MPI traffic at best), which is
  # the regime of a GPU cluster: the link waits, the cores compute.
  for rate in 10gbit 1gbit; do
    echo "## two namespaces, veth limited to $rate, bucket $bb bytes"
    "$root/tests/integration/two_hosts.sh" --rate $rate -- "$worker" $args --bucket-bytes $bb 2>&1 | only_results "overlap|SKIP"
  done
done
