#!/usr/bin/env bash
# Multi-rank CPU training throughput on one host: train_resnet18 (N ranks under mpirun, MPI
# gradient averaging, synthetic data) against PyTorch DistributedDataParallel (gloo, N processes,
# tools/bench/torch_cpu_ddp.py), same model (ResNet18, 10 classes), ranks, threads per rank, batch
# per rank, resolution and optimiser, alternated ROUNDS times so that drifting load hits both alike.
# Prints every round, then the medians and the ratio ours / PyTorch.
#   tools/bench/ddp_cpu_train.sh                       # 2 ranks x 1 thread, batch 64 per rank, 64 px
#   SIZE=32 ROUNDS=5 tools/bench/ddp_cpu_train.sh
#   TRAIN=/path/to/train_resnet18 tools/bench/ddp_cpu_train.sh   # another build of ours
# Settings (environment): RANKS THREADS BATCH ITERS WARMUP ROUNDS at least 1, SIZE at least 32, ITERS a
# multiple of WARMUP.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
usage() { sed -n '2,/^[^#]/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
# need_int NAME VALUE MIN: VALUE a whole number >= MIN, or one line naming NAME and exit 2
need_int() { if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then echo "$(basename "$0"): $1 must be a whole number >= $3, got '$2'" >&2; exit 2; fi; }
case ${1:-} in -h|--help) usage; exit 0 ;; ?*) echo "ddp_cpu_train.sh: takes no arguments, settings come from the environment (see --help)" >&2; exit 2 ;; esac
BUILD=${DDP_BUILD_DIR:-$ROOT/build}
TRAIN=${TRAIN:-$BUILD/src/apps/train_resnet18}
RANKS=${RANKS:-2}
need_int RANKS "$RANKS" 1
THREADS=${THREADS:-$(( $(nproc) / RANKS > 0 ? $(nproc) / RANKS : 1 ))}
BATCH=${BATCH:-64}
SIZE=${SIZE:-64}
ITERS=${ITERS:-30}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-3}
need_int THREADS "$THREADS" 1
need_int BATCH "$BATCH" 1
need_int SIZE "$SIZE" 32
need_int ITERS "$ITERS" 1
need_int WARMUP "$WARMUP" 1
need_int ROUNDS "$ROUNDS" 1
((ITERS % WARMUP == 0)) || { echo "ddp_cpu_train.sh: ITERS ($ITERS) must be a multiple of WARMUP ($WARMUP): the log windows are WARMUP steps" >&2; exit 2; }
[[ -x $TRAIN ]] || { echo "error: $TRAIN not found; build it: cmake --build $BUILD --target train_resnet18" >&2; exit 2; }
/usr/bin/python3 -c 'import torch, torchvision' 2>/dev/null ||
  { echo "error: the peer needs Debian's python3-torch and python3-torchvision (tools/setup installs them)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc --all) CPUs); $RANKS ranks x $THREADS threads," \
     "batch $BATCH per rank, ${SIZE}x${SIZE}, $ITERS steps after $WARMUP; load $(cut -d' ' -f1-3 /proc/loadavg);" \
     "$(date -u +%FT%TZ); ours: $TRAIN"

ours() {
  # One epoch of WARMUP + ITERS steps with a JSONL record every WARMUP steps; the first window
  # (the warm-up) is dropped. ITERS should be a multiple of WARMUP.
  rm -f "$TMP/o.jsonl"
  mpirun -np "$RANKS" --oversubscribe --bind-to none --mca btl_vader_single_copy_mechanism none \
    "$TRAIN" --data synthetic --synthetic-size $(( (WARMUP + ITERS) * BATCH * RANKS )) --synthetic-classes 10 \
    --image-size "$SIZE" --batch-size "$BATCH" --threads "$THREADS" --epochs 1 --no-eval --lr 0.05 --nesterov \
    --wd 5e-4 --no-wd-bn-bias --label-smoothing 0.1 --log-every "$WARMUP" --progress lines \
    --jsonl "$TMP/o.jsonl" >"$TMP/o.log" 2>&1 || { cat "$TMP/o.log" >&2; exit 1; }
  # Harmonic mean of the windows after the first = images / time over those steps.
  grep '"type": "train"' "$TMP/o.jsonl" | sed -E 's/.*"img_per_s": ([0-9.eE+-]+).*/\1/' |
    awk 'NR > 1 { s += 1 / $1; n++ } END { if (n == 0) exit 1; printf "%.2f\n", n / s }'
}

peer() {
  /usr/bin/python3 "$ROOT/tools/bench/torch_cpu_ddp.py" --ranks "$RANKS" --threads "$THREADS" --batch "$BATCH" \
    --size "$SIZE" --iters "$ITERS" --warmup "$WARMUP" | sed -n 's/.*img_per_s=\([0-9.]*\).*/\1/p'
}

a=() b=()
for r in $(seq 1 "$ROUNDS"); do
  x=$(ours)
  y=$(peer)
  a+=("$x") b+=("$y")
  echo "round $r: ours $x img/s, PyTorch DDP $y img/s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ma=$(median "${a[@]}")
mb=$(median "${b[@]}")
awk -v a="$ma" -v b="$mb" -v n="$RANKS" -v s="$SIZE" 'BEGIN {
  printf "median: ours %.1f img/s, PyTorch DDP (gloo) %.1f img/s, ratio %.2f (%d ranks, %dx%d)\n", a, b, a / b, n, s, s }'
