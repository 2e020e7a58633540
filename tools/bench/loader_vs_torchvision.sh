#!/bin/bash
# Loader throughput against torchvision on the same machine, same JPEG files, same worker count.
#   tools/bench/loader_vs_torchvision.sh [BUILD_DIR] [N_IMAGES] [WORKERS]
# Makes N natural-looking ~470x400 JPEGs (ImageNet's typical size), packs them unchanged
# (pack_imagenet --resize 0 keeps the original bytes), then times one warm-up + 3 epochs of each:
#   ours:  ddp::data::Loader, RandomResizedCrop(224) + flip -> uint8 NHWC batches
#   peer:  ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor, DataLoader
# and prints both rates, per core, and the ratio.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
N="${2:-400}"
WORKERS="${3:-$(nproc)}"
PY=/usr/bin/python3
cmake --build "$BUILD" --target pack_imagenet loader_bench -j"$(nproc)" >/dev/null
WORK="$(mktemp -d /tmp/loader_bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
$PY "$ROOT/tools/bench/loader_make_jpegs.py" "$WORK/imgs" "$N"
"$BUILD/data-prep/pack_imagenet" --no-progress -i "$WORK/imgs" -o "$WORK/shards" --resize 0 >/dev/null 2>&1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
PEER=$($PY "$ROOT/tools/bench/loader_torchvision.py" "$WORK/imgs/train" "$WORKERS")
OURS=$("$BUILD/data-prep/loader_bench" --shards "$WORK/shards" --workers "$WORKERS")
echo "$PEER"
echo "$OURS"
P=$(echo "$PEER" | sed -E 's/.*: ([0-9.]+) img\/s.*/\1/')
O=$(echo "$OURS" | sed -E 's/.*: ([0-9.]+) img\/s.*/\1/')
awk -v p="$P" -v o="$O" -v w="$WORKERS" 'BEGIN {
  printf "per core (%d workers): ours %.1f img/s, torchvision %.1f img/s; ratio ours/torchvision = %.2fx\n", w, o / w, p / w, o / p }'
