#!/bin/bash
# Allreduce bus bandwidth of the MPI communicator (busbw = algbw * 2(n-1)/n, as nccl-tests reports),
# 1 KB to 64 MB, on: one host (shared memory), one host over TCP loopback, and two network-namespace
# "hosts" over a veth pair (unlimited, and limited to 10 Gbit/s with tc tbf: the single-flow limit
# inside an AWS placement group). The namespace runs need root; they are skipped otherwise.
#   tools/bench/allreduce.sh [BUILD_DIR] [--quick]
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
build="" quick=""
for a in "$@"; do
  case $a in
    -h|--help) usage; exit 0 ;;
    --quick) quick=--quick ;;
    -*) echo "allreduce.sh: unknown option '$a' (usage: tools/bench/allreduce.sh [BUILD_DIR] [--quick])" >&2; exit 2 ;;
    *) [ -z "$build" ] || { echo "allreduce.sh: one BUILD_DIR only, got '$build' and '$a'" >&2; exit 2; }; build=$a ;;
  esac
done
build=${build:-$root/build}
[ -d "$build" ] || { echo "allreduce.sh: build directory '$build' does not exist" >&2; exit 2; }
bench=$build/tests/comm/ddp_allreduce_bench
[ -x "$bench" ] || { echo "build the benchmark first: cmake --build $build --target ddp_allreduce_bench" >&2; exit 2; }
args="--min-bytes 1024 --max-bytes 67108864 --iters 10 --warmup 2"
[ "$quick" = --quick ] && args="--min-bytes 1024 --max-bytes 4194304 --iters 5 --warmup 1"
mpi="mpirun --allow-run-as-root --oversubscribe --bind-to none"
echo "# machine: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%FT%TZ)"
# Each run prints our communicator (ddp_comm lines) and, as the peer, a plain blocking MPI_Allreduce
# in the same job, interleaved iteration by iteration (mpi_allreduce lines).
echo "## 2 ranks, one host, shared memory (btl vader)"
$mpi -np 2 --mca btl self,vader --mca btl_vader_single_copy_mechanism none "$bench" $args
echo "## 2 ranks, one host, TCP over loopback"
$mpi -np 2 --mca btl self,tcp --mca btl_tcp_if_include lo "$bench" $args
echo "## 2 ranks, two namespaces over a veth pair (TCP)"
"$root/tests/integration/two_hosts.sh" -- "$bench" $args
echo "## 2 ranks, two namespaces, veth limited to 10gbit (tc tbf)"
"$root/tests/integration/two_hosts.sh" --rate 10gbit -- "$bench" $args
