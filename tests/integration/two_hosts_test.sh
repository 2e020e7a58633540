#!/bin/bash
# CTest: DDP training across two network-namespace "hosts" (two_hosts.sh), one rank each, TCP
# between them. Passes when the job runs on 2 nodes, the replica checksums agree at every step, and
# the parameters equal a 1-rank run on the same global batch (|diff| <= 1e-6 + 1e-5 |ref|, fp32
# summation order). Exit 77 = skipped (no namespaces here).
#   two_hosts_test.sh WORKER MPIRUN
set -u
worker=$1 mpiexec=$2
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/ddp_two_hosts_test.XXXXXX)
trap 'rm -rf "$out"' EXIT
args="--model mlp --steps 5 --global-batch 12 --lr 0.05 --bucket-bytes 2048 --timeout 30"

"$worker" $args --out "$out/one.bin" > "$out/one.log" 2>&1 || { cat "$out/one.log"; echo "FAIL: 1-rank reference run"; exit 1; }
"$here/two_hosts.sh" --mpirun "$mpiexec" -- "$worker" $args --check-every 1 --out "$out/two.bin" --report "$out/rep.txt" \
  > "$out/two.log" 2>&1
rc=$?
cat "$out/two.log"
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { echo "FAIL: two-host run exited $rc"; exit 1; }
grep -q "2 ranks on 2 nodes" "$out/two.log" || { echo "FAIL: the ranks did not land on two nodes"; exit 1; }
grep -q "^steps=5,5$" "$out/rep.txt" || { echo "FAIL: step counts: $(cat "$out/rep.txt")"; exit 1; }
/usr/bin/python3 "$here/two_hosts_compare.py" "$out/two.bin" "$out/one.bin" 1e-6 1e-5 || { echo "FAIL: parameters differ from the 1-rank run"; exit 1; }
echo "PASS: two hosts trained one model; replicas agree"
