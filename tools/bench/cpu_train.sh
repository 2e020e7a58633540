#!/usr/bin/env bash
# CPU training throughput (forward + backward + SGD, synthetic data): our CpuResNet18 against PyTorch
# CPU (torchvision ResNet18, Debian's /usr/bin/python3) on this machine, same threads, batch and
# resolution, in one run. Prints one line per configuration and the ratio ours / PyTorch.
#   tools/bench/cpu_train.sh                  # 32x32 batch 128 and 224x224 batch 16
#   THREADS=4 ITERS=20 tools/bench/cpu_train.sh
#   DDP_BUILD_DIR=build-x tools/bench/cpu_train.sh
#   THREADS=1 BATCH_32=64 ONLY_32=1 tools/bench/cpu_train.sh   # one quick-start rank: 1 thread, batch 64
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case ${1:-} in
  -h|--help) sed -n '2,/^[^#]/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ?*) echo "cpu_train.sh: takes no arguments, settings come from the environment (see --help)" >&2; exit 2 ;;
esac
BUILD=${DDP_BUILD_DIR:-$ROOT/build}
BIN=$BUILD/src/backend/cpu/bench_cpu_train
THREADS=${THREADS:-$(nproc)}
if [[ ! -x $BIN ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target bench_cpu_train -j "$(nproc)" >/dev/null
fi
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc --all) CPUs), threads $THREADS," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg), OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default}, $(date -u +%FT%TZ)"
# OpenMP and OpenBLAS read these; both sides get the same count.
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1
run() {  # batch size iters warmup
  local ours torch
  ours=$("$BIN" --batch "$1" --size "$2" --iters "$3" --warmup "$4" --threads "$THREADS")
  torch=$(OPENBLAS_NUM_THREADS=$THREADS /usr/bin/python3 "$ROOT/tools/bench/torch_cpu_train.py" --batch "$1" --size "$2" \
          --iters "$3" --warmup "$4" --threads "$THREADS")
  echo "$ours"
  echo "$torch"
  local a b
  a=$(sed -n 's/.*img_per_s=\([0-9.]*\).*/\1/p' <<<"$ours")
  b=$(sed -n 's/.*img_per_s=\([0-9.]*\).*/\1/p' <<<"$torch")
  awk -v a="$a" -v b="$b" -v s="$2" -v n="$1" \
    'BEGIN { printf "%dx%d batch %d: ours %.1f img/s, PyTorch %.1f img/s, ratio %.2f\n", s, s, n, a, b, a / b }'
}
run "${BATCH_32:-128}" 32 "${ITERS:-10}" 2
[[ -n ${ONLY_32:-} ]] || run 16 224 "${ITERS_224:-${ITERS:-5}}" 1
