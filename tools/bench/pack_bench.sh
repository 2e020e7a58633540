#!/bin/bash
# pack_imagenet images/s per core on full-size JPEGs (about 500x375, ImageNet's most common size),
# default policy (shorter side 256, JPEG quality 90), with 1 thread and with all cores, against a
# one-process PIL loop doing the same work on the same files.
#   tools/bench/pack_bench.sh [BUILD_DIR] [N_IMAGES]    (defaults: build 300; N_IMAGES >= 1)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
# need_int NAME VALUE MIN: VALUE a whole number >= MIN, or one line naming NAME and exit 2
need_int() { if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then echo "$(basename "$0"): $1 must be a whole number >= $3, got '$2'" >&2; exit 2; fi; }
case ${1:-} in -h|--help) usage; exit 0 ;; -*) echo "pack_bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;; esac
(($# <= 2)) || { echo "pack_bench.sh: at most 2 arguments (see --help)" >&2; exit 2; }
BUILD="${1:-$ROOT/build}"
N="${2:-300}"
[[ -d $BUILD ]] || { echo "pack_bench.sh: build directory '$BUILD' does not exist" >&2; exit 2; }
need_int N_IMAGES "$N" 1
PY=/usr/bin/python3
cmake --build "$BUILD" --target pack_imagenet -j"$(nproc)" >/dev/null
WORK="$(mktemp -d /tmp/pack_bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
$PY "$ROOT/tools/bench/loader_make_jpegs.py" "$WORK/imgs" "$N" 500 375
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
PEER=$($PY "$ROOT/tools/bench/pack_pil.py" "$WORK/imgs")
echo "$PEER"
rate() { sed -nE 's/.*\(([0-9.]+) s, ([0-9.]+) images\/s.*/\2/p'; }
R1=$("$BUILD/data-prep/pack_imagenet" --no-progress -i "$WORK/imgs" -o "$WORK/s1" --threads 1 2>/dev/null | rate)
RN=$("$BUILD/data-prep/pack_imagenet" --no-progress -i "$WORK/imgs" -o "$WORK/sn" --threads "$(nproc)" 2>/dev/null | rate)
P=$(echo "$PEER" | sed -E 's/.*: ([0-9.]+) img\/s.*/\1/')
awk -v r1="$R1" -v rn="$RN" -v p="$P" -v n="$(nproc)" 'BEGIN {
  printf "pack_imagenet: %.1f img/s with 1 thread, %.1f img/s with %d threads (%.1f per core); PIL 1 process %.1f img/s; ratio (1 core) = %.2fx\n",
         r1, rn, n, rn / n, p, r1 / p }'
