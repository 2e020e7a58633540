#!/usr/bin/env bash
# train_resnet18 on two "nodes" (two_hosts.sh: two network namespaces, one rank each unless said) with
# --shard-scope node, the default, in the layouts the README offers:
#   A. each node holds only its share, from pack_imagenet --nodes 2 --node-index i (node-local volumes);
#   B. each node sees the whole set (a shared file system, or a copy per node);
#   C. node 1's shards from another packing (4 shards, not 2): refused, naming both hosts;
#   D. --shard-scope global over node-local shares: refused (the set is incomplete), saying that the
#      shards are one node's share and that --shard-scope node reads them;
#   E. node 1's share from a packing of other input files with the same settings and shard count:
#      refused by the set fingerprint, naming both hosts (only the fingerprint tells the two apart);
#   F. node 0's shards from an older pack_imagenet (no set_fingerprint): trained as before, with one
#      warning naming node 0's host that the sets are compared without it;
#   G. two ranks on node 0 and one on node 1, node-local shares: refused, naming both hosts, their
#      ranks and the part of each share an epoch would train (node 1's rank: half of its share);
#   H. the same uneven ranks with --shard-scope global over the shared set: trained, every image once.
# A and B must give each node its share only (pack_imagenet's shard 0 holds 257 of the 512 training
# images, shard 1 255: 7 agreed steps of 2 x 32, where reading the whole set per node gave 16) and
# count every validation image exactly once across the nodes.
# Usage: train_two_nodes.sh TRAIN_RESNET18 PACK_IMAGENET FASHION_MNIST_TO_JPEG MPIEXEC H5_DELETE_ATTR
# Exit 77 (skipped): no Fashion-MNIST, or no network namespaces here.
set -uo pipefail
TRAIN=$1 PACK=$2 TOJPEG=$3 MPIEXEC=$4 DELATTR=$5
here=$(cd "$(dirname "$0")" && pwd)
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || { echo "SKIP: dataset-fashion-mnist not installed"; exit 77; }
T=$(mktemp -d /tmp/ddp_train_two_nodes.XXXXXX)
trap 'rm -rf "$T"' EXIT
chmod 755 "$T"  # the ranks run in other namespaces, as root: only the mount table is shared
set -e
"$TOJPEG" --output "$T/jpeg" --limit-train 512 --limit-val 200 >/dev/null
pack() { "$PACK" --input "$T/jpeg" --encoding raw --resize 32 --allow-upscale --no-progress "$@" >/dev/null; }
pack --output "$T/A/node0" --nodes 2 --node-index 0
pack --output "$T/A/node1" --nodes 2 --node-index 1
pack --output "$T/B/shared" --shards 2
mkdir -p "$T/C" && cp -r "$T/A/node0" "$T/C/node0"
pack --output "$T/C/node1" --shards 4
# E: another input tree (128 more training images; the same names for the first 512, the same
# settings, the same shard count), node 1's share of it beside node 0's share of the first.
"$TOJPEG" --output "$T/jpeg2" --limit-train 640 --limit-val 200 >/dev/null
mkdir -p "$T/E" && cp -r "$T/A/node0" "$T/E/node0"
"$PACK" --input "$T/jpeg2" --encoding raw --resize 32 --allow-upscale --no-progress \
  --output "$T/E/node1" --nodes 2 --node-index 1 >/dev/null
# F: node 0's shards as an older pack_imagenet wrote them (no set_fingerprint), node 1's as this one.
cp -r "$T/A" "$T/F"
"$DELATTR" set_fingerprint "$T"/F/node0/*.h5
set +e

# Each rank's --data: its node's own directory, as a node-local volume mounted at one path would give
# (rank r runs on node r, or on node NODE_OF[r] when NODE_OF lists each rank's node); or the shared one.
cat >"$T/rank.sh" <<RANK
#!/bin/bash
d=\$1; shift
node_of=(\${NODE_OF:-})
n=\${node_of[\$OMPI_COMM_WORLD_RANK]:-\$OMPI_COMM_WORLD_RANK}
[[ \$d == shared ]] || d=node\$n
exec "$TRAIN" --data "$T/\$CASE/\$d" "\$@"
RANK
chmod +x "$T/rank.sh"
ARGS=(--image-size 32 --backend cpu --threads 1 --batch-size 32 --epochs 1 --lr 0.05 --random-crop off
      --eval-crop-ratio 1 --progress lines --timeout 60)
run() {  # run CASE DATA(own|shared) NAME [extra args]; PER_HOST=N,M and NODE_OF="0 0 1" for uneven hosts
  local c=$1 d=$2 name=$3; shift 3
  CASE=$c NODE_OF=${NODE_OF:-} "$here/two_hosts.sh" --np-per-host "${PER_HOST:-1}" --mpirun "$MPIEXEC" -- \
    -x CASE -x NODE_OF "$T/rank.sh" "$d" "${ARGS[@]}" --jsonl "$T/$name.jsonl" "$@" >"$T/$name.log" 2>&1
}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

for c in A:own B:shared; do
  name=${c%%:*}
  run "$name" "${c#*:}" "$name"; rc=$?
  [[ $rc -eq 77 ]] && { cat "$T/$name.log"; exit 77; }
  if [[ $rc -ne 0 ]]; then cat "$T/$name.log"; fail "case $name: exit $rc"; continue; fi
  grep -q "2 ranks on 2 nodes" "$T/$name.log" || fail "case $name: the ranks did not land on two nodes"
  grep -q "data: train: 257 images in 1 shard(s) (node 0's share of 2)" "$T/$name.log" ||
    { grep "data:" "$T/$name.log"; fail "case $name: node 0 did not read its share (257 images, 1 shard of 2)"; }
  grep -q "schedule: 1 epochs x 7 steps (global batch 64)" "$T/$name.log" ||
    { grep "schedule:" "$T/$name.log"; fail "case $name: not 7 steps of 64 (each node its share, 255 images the fewer)"; }
  n=$(grep '"type": "eval"' "$T/$name.jsonl" | tail -1 | sed -E 's/.*"images": ([0-9]+).*/\1/')
  [[ $n == 200 ]] || fail "case $name: evaluation counted ${n:-nothing} images, not the 200 there are"
  ! grep -q "no set_fingerprint" "$T/$name.log" || fail "case $name: warned of shards without a set_fingerprint"
  ((fails)) || echo "case $name: ok (node shares of 257 and 255 images, 7 steps of 64, 200/200 validation images)"
done

run C own C; rc=$?
if [[ $rc -eq 0 ]] || ! grep -q "read shares of differently packed sets.*first difference: rank 0 has 'train set: 2 shard(s)" "$T/C.log"; then
  tail -5 "$T/C.log"; fail "case C: node 1's 4-shard packing was not refused with the difference named (exit $rc)"
else
  echo "case C: ok, refused: $(grep -m1 "differently packed" "$T/C.log")"
fi

run A own D --shard-scope global; rc=$?
if [[ $rc -eq 0 ]] || ! grep -q "is incomplete: 1 missing (train-00001-of-00002.h5). The shards present (train-00000-of-00002.h5) are exactly node 0's share of a set packed for 2 nodes.*use --shard-scope node" "$T/D.log"; then
  tail -5 "$T/D.log"; fail "case D: --shard-scope global over node-local shares was not refused as one node's share, pointing to --shard-scope node (exit $rc)"
else
  echo "case D: ok, refused: $(grep -m1 "is incomplete" "$T/D.log")"
fi

run E own E; rc=$?
if [[ $rc -eq 0 ]] || ! grep -q "ranks 0 (host [^)]*) and 1 (host [^)]*) read shares of differently packed sets.*first difference: rank 0 has 'train set fingerprint fnv1a64:[0-9a-f]*', rank 1 has 'train set fingerprint fnv1a64:[0-9a-f]*'" "$T/E.log"; then
  tail -5 "$T/E.log"; fail "case E: node 1's share of a packing of other input files was not refused by the set fingerprint (exit $rc)"
else
  echo "case E: ok, refused: $(grep -m1 -o "read shares of differently packed sets.*first difference[^.]*" "$T/E.log" | head -1)"
fi

run F own F; rc=$?
host0=$(grep -m1 -o "node 0 [^:]*:" "$T/F.log" | sed -E 's/node 0 (.*):/\1/')
warned=$(grep -c "the shards on $host0 have no set_fingerprint (packed by an older pack_imagenet)" "$T/F.log")
if [[ $rc -ne 0 || $warned -ne 1 ]] || ! grep -q "schedule: 1 epochs x 7 steps (global batch 64)" "$T/F.log"; then
  tail -5 "$T/F.log"; fail "case F: shards of an older pack_imagenet on node 0 did not train with one warning naming its host '$host0' (exit $rc, $warned warning(s))"
else
  echo "case F: ok, trained as before, warned once: $(grep -m1 -o "the shards on .* sizes only" "$T/F.log")"
fi

PER_HOST=2,1 NODE_OF="0 0 1" run A own G; rc=$?
if [[ $rc -eq 0 ]] || ! grep -q "3 ranks on 2 nodes" "$T/G.log" ||
   ! grep -q "unequal ranks per node.*node 0 (host [^)]*): 2 rank(s), a share of 257 images, 256 trained per epoch (100%); node 1 (host [^)]*): 1 rank(s), a share of 255 images, 128 trained per epoch (50%).*--shard-scope global" "$T/G.log"; then
  tail -5 "$T/G.log"; fail "case G: two ranks on node 0 and one on node 1 with node-local shares were not refused with each node's ranks and trained share (exit $rc)"
else
  echo "case G: ok, refused: $(grep -m1 -o "unequal ranks per node.*(50%)\]" "$T/G.log")"
fi

PER_HOST=2,1 run B shared H --shard-scope global; rc=$?
n=$(grep '"type": "eval"' "$T/H.jsonl" 2>/dev/null | tail -1 | sed -E 's/.*"images": ([0-9]+).*/\1/')
if [[ $rc -ne 0 ]] || ! grep -q "schedule: 1 epochs x 5 steps (global batch 96)" "$T/H.log" || [[ $n != 200 ]]; then
  tail -5 "$T/H.log"; fail "case H: uneven ranks with --shard-scope global over the shared set did not train 5 steps of 96 and evaluate 200 images (exit $rc)"
else
  echo "case H: ok, uneven ranks over the shared set with --shard-scope global: 5 steps of 3 x 32, 200/200 validation images"
fi
((fails)) && exit 1
echo "PASS: two nodes, --shard-scope node: own shares and a shared set train each image once and evaluate 200/200; other packings, unequal ranks per node and global scope over node shares are refused, saying why"
