#!/usr/bin/env bash
# The quick start's pipeline in miniature: Fashion-MNIST (a subset) -> JPEG tree -> pack_imagenet
# --shards 2 -> mpirun -np 2 train_resnet18 on the shards. Asserts training ran on real shards, the
# evaluation counted every validation image exactly once across the two ranks, and the loss fell.
# Usage: train_shards.sh TRAIN_RESNET18 PACK_IMAGENET FASHION_MNIST_TO_JPEG MPIEXEC
set -uo pipefail
TRAIN=$1 PACK=$2 TOJPEG=$3 MPIEXEC=$4
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || { echo "SKIP: dataset-fashion-mnist not installed"; exit 77; }
T=$(mktemp -d /tmp/ddp_train_shards.XXXXXX)
trap 'rm -rf "$T"' EXIT
set -e
"$TOJPEG" --output "$T/jpeg" --limit-train 1024 --limit-val 333 >/dev/null
"$PACK" --input "$T/jpeg" --output "$T/shards" --shards 2 --encoding raw --resize 32 --allow-upscale --no-progress >/dev/null
set +e
"$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none -np 2 --mca btl_vader_single_copy_mechanism none \
  "$TRAIN" --data "$T/shards" --image-size 32 --backend cpu --threads 1 --batch-size 32 --epochs 3 --lr 0.1 \
  --lr-schedule onecycle --random-crop off --eval-crop-ratio 1 --log-every 4 --progress lines \
  --jsonl "$T/m.jsonl" >"$T/log" 2>&1
rc=$?
cat "$T/log"
[[ $rc -eq 0 ]] || { echo "FAIL: train_resnet18 exited $rc"; exit 1; }
grep -q "train: 1024 images in 2 shard(s)" "$T/log" || { echo "FAIL: did not read the 1024 packed training images"; exit 1; }
# 333 validation images over 2 ranks (not divisible): each counted once.
n=$(grep '"type": "eval"' "$T/m.jsonl" | tail -1 | sed -E 's/.*"images": ([0-9]+).*/\1/')
[[ $n == 333 ]] || { echo "FAIL: evaluation counted $n images, expected 333"; exit 1; }
first=$(grep '"type": "train"' "$T/m.jsonl" | head -1 | sed -E 's/.*"loss": ([0-9.eE+-]+).*/\1/')
last=$(grep '"type": "train"' "$T/m.jsonl" | tail -1 | sed -E 's/.*"loss": ([0-9.eE+-]+).*/\1/')
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || { echo "FAIL: loss did not fall ($first -> $last)"; exit 1; }
echo "PASS: 2 ranks trained on packed shards (loss $first -> $last), evaluated 333/333 images"
