#!/bin/bash
# Loader throughput against torchvision on the same machine, same JPEG files, same worker count.
#   tools/bench/loader_vs_torchvision.sh [BUILD_DIR] [N_IMAGES] [WORKERS] [ROUNDS] [SECONDS]
# Makes N natural-looking ~470x400 JPEGs (ImageNet's typical size) and packs them at their size
# (pack_imagenet --resize 0 keeps each file's DCT coefficients, re-entropy-coded with a restart marker
# per MCU: the same pixels, and our crops decode only what they cover; the peer reads the original
# files, which have none, as ImageNet's do), then runs ROUNDS rounds (default 5), each
# timing both sides back to back (the order alternates between rounds, so a drift in the machine's
# load does not favour one side), each side one warm-up epoch and then whole epochs for at least
# SECONDS (default 10):
#   ours:  ddp::data::Loader, RandomResizedCrop(224) + flip -> uint8 NHWC batches
#   peer:  ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor, DataLoader
# Prints every run, each round's ratios, and the medians (ratio: median of the rounds' ratios), for
# throughput (img/s) and for images per CPU-second (every thread / worker process, from the kernel's
# accounting): the second is "per core" without assuming each side got the cores it asked for, so a
# machine loaded by other work disturbs it much less.
# N_IMAGES must be at least one batch (64: both sides drop a partial last batch), WORKERS and ROUNDS at
# least 1, SECONDS a whole number >= 0.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
# need_int NAME VALUE MIN: VALUE a whole number >= MIN, or one line naming NAME and exit 2
need_int() { if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then echo "$(basename "$0"): $1 must be a whole number >= $3, got '$2'" >&2; exit 2; fi; }
case ${1:-} in -h|--help) usage; exit 0 ;; -*) echo "loader_vs_torchvision.sh: unknown option '$1' (see --help)" >&2; exit 2 ;; esac
(($# <= 5)) || { echo "loader_vs_torchvision.sh: at most 5 arguments (see --help)" >&2; exit 2; }
BUILD="${1:-$ROOT/build}"
N="${2:-400}"
WORKERS="${3:-$(nproc)}"
ROUNDS="${4:-5}"
SECONDS_MIN="${5:-10}"
[[ -d $BUILD ]] || { echo "loader_vs_torchvision.sh: build directory '$BUILD' does not exist" >&2; exit 2; }
need_int N_IMAGES "$N" 64
need_int WORKERS "$WORKERS" 1
need_int ROUNDS "$ROUNDS" 1
need_int SECONDS "$SECONDS_MIN" 0
PY=/usr/bin/python3
cmake --build "$BUILD" --target pack_imagenet loader_bench -j"$(nproc)" >/dev/null
WORK="$(mktemp -d /tmp/loader_bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
$PY "$ROOT/tools/bench/loader_make_jpegs.py" "$WORK/imgs" "$N"
"$BUILD/data-prep/pack_imagenet" --no-progress -i "$WORK/imgs" -o "$WORK/shards" --resize 0 >/dev/null 2>&1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u '+%F %H:%M UTC');" \
  "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
rate() { sed -E 's/.*: ([0-9.]+) img\/s.*/\1/' <<<"$1"; }
cpur() { sed -E 's/.* ([0-9.]+) img per CPU-second.*/\1/' <<<"$1"; }
peer() { $PY "$ROOT/tools/bench/loader_torchvision.py" "$WORK/imgs/train" "$WORKERS" 64 3 224 "$SECONDS_MIN"; }
ours() { "$BUILD/data-prep/loader_bench" --shards "$WORK/shards" --workers "$WORKERS" --seconds "$SECONDS_MIN"; }
RESULTS=()
for ((r = 1; r <= ROUNDS; ++r)); do
  if ((r % 2)); then
    P=$(peer); O=$(ours)
  else
    O=$(ours); P=$(peer)
  fi
  echo "round $r: $P"
  echo "round $r: $O"
  p=$(rate "$P"); o=$(rate "$O"); pc=$(cpur "$P"); oc=$(cpur "$O")
  awk -v r="$r" -v p="$p" -v o="$o" -v pc="$pc" -v oc="$oc" -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    printf "round %d: torchvision %.1f img/s, ours %.1f img/s, ratio %.2fx; per CPU-second %.1f vs %.1f, ratio %.2fx (load %s)\n",
           r, p, o, o / p, pc, oc, oc / pc, l }'
  RESULTS+=("$p $o $pc $oc")
done
printf '%s\n' "${RESULTS[@]}" | awk -v w="$WORKERS" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; ++i) for (j = i; j > 1 && a[j - 1] > a[j]; --j) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { p[NR] = $1; o[NR] = $2; q[NR] = $2 / $1; pc[NR] = $3; oc[NR] = $4; qc[NR] = $4 / $3
    if (NR == 1 || q[NR] < lo) lo = q[NR]; if (NR == 1 || q[NR] > hi) hi = q[NR]
    if (NR == 1 || qc[NR] < loc) loc = qc[NR]; if (NR == 1 || qc[NR] > hic) hic = qc[NR] }
  END {
    mp = median(p, NR); mo = median(o, NR); mq = median(q, NR); mpc = median(pc, NR); moc = median(oc, NR); mqc = median(qc, NR)
    printf "median of %d rounds (%d workers): torchvision %.1f img/s (%.1f per core), ours %.1f img/s (%.1f per core); ", NR, w, mp, mp / w, mo, mo / w
    printf "ratio ours/torchvision: median %.2fx, min %.2fx, max %.2fx\n", mq, lo, hi
    printf "per CPU-second: torchvision %.1f, ours %.1f; ratio median %.2fx, min %.2fx, max %.2fx\n", mpc, moc, mqc, loc, hic
  }'
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
