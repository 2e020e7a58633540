#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted bash -c bodies: meant as written
# The user-facing scripts in tools/ without building or training: tools/quickstart, tools/test and
# tools/setup run from a fake repository (copies of the scripts; a stand-in tools/setup) against stand-in
# cmake, ctest, mpirun, dpkg-query and a fake build whose train_resnet18 writes JSONL as the real one
# does; the benchmark scripts in tools/bench get bad arguments (refused before they run anything).
# The real pipeline runs in tools/quickstart itself and tests/integration.
# Usage: tests/tools/test_tools.sh [BUILD_DIR]
#   BUILD_DIR (optional) a build whose loader_bench, make_bench_jpegs and pack_imagenet get bad input
#             (default: build; skipped with a note where they are not built).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$ROOT/build}
# shellcheck source-path=SCRIPTDIR source=harness.sh
source "$ROOT/tests/tools/harness.sh"

if command -v shellcheck >/dev/null; then
  check "shellcheck tools/quickstart, tools/test, tools/setup, tools/bench/*.sh, this test" \
    shellcheck -x -S warning "$ROOT/tools/quickstart" "$ROOT/tools/test" "$ROOT/tools/setup" "$ROOT"/tools/bench/*.sh \
    "$ROOT/tests/tools/test_tools.sh"
else
  fail "shellcheck not installed (tools/setup installs it)"
fi

# ---- a fake repository and build, stand-in commands ---------------------------------------------------
REPO="$TMP/repo"
FB="$TMP/fbuild"
STUB="$TMP/stub"
mkdir -p "$REPO/tools" "$FB/src/apps" "$FB/data-prep" "$STUB"
cp "$ROOT/tools/quickstart" "$ROOT/tools/test" "$REPO/tools/"
printf '#!/bin/bash\nexit 0\n' >"$REPO/tools/setup"
# cmake and ctest record their arguments
printf '#!/bin/bash\necho "$*" >>"%s/cmake.args"\n' "$TMP" >"$STUB/cmake"
printf '#!/bin/bash\necho "$*" >>"%s/ctest.args"\n' "$TMP" >"$STUB/ctest"
printf '#!/bin/bash\nexit 1\n' >"$STUB/nvidia-smi"
# mpirun: records its arguments and pid, then runs the program after its own options; with FAKE_MPI=hang it
# waits for a signal instead, as a training run would, and records which one came.
cat >"$STUB/mpirun" <<EOF
#!/bin/bash
printf '%s\n' "\$@" >"$TMP/mpirun.args"
echo \$\$ >"$TMP/mpirun.pid"
if [[ \${FAKE_MPI:-} == hang ]]; then
  trap 'echo USR1 >>"$TMP/mpirun.signals"; exit 0' USR1
  trap 'echo TERM >>"$TMP/mpirun.signals"; exit 143' TERM
  for ((i = 0; i < 300; i++)); do sleep 0.1; done
  exit 0
fi
while ((\$#)) && [[ \$1 != */train_resnet18 ]]; do shift; done
exec "\$@"
EOF
# train_resnet18: refuses a flag given twice (as the real one does), writes JSONL per FAKE_TRAIN
cat >"$FB/src/apps/train_resnet18" <<'EOF'
#!/bin/bash
declare -A seen=()
j=/dev/null
for a in "$@"; do
  [[ $a == --* ]] || continue
  f=${a%%=*}
  [[ -n ${seen[$f]:-} ]] && { echo "error: option '$f' given more than once" >&2; exit 2; }
  seen[$f]=1
done
while (($#)); do [[ $1 == --jsonl ]] && j=$2; shift; done
case ${FAKE_TRAIN:-eval} in
  eval) printf '{"type": "train", "step": 10}\n{"type": "eval", "epoch": 2, "top1": 0.9045, "top5": 0.99}\n' >>"$j" ;;
  noeval) printf '{"type": "train", "step": 2}\n{"type": "summary", "steps": 2, "global_step": 2}\n' >>"$j" ;;
  fail) echo "error: something" >&2; exit 2 ;;
esac
exit 0
EOF
printf '#!/bin/bash\nexit 0\n' >"$FB/data-prep/pack_imagenet"
printf '#!/bin/bash\nexit 0\n' >"$FB/data-prep/fashion_mnist_to_jpeg"
chmod +x "$REPO"/tools/* "$STUB"/* "$FB"/src/apps/* "$FB"/data-prep/*
SPATH="$STUB:$PATH"
# qs [ARGS...]: tools/quickstart of the fake repository on the fake build; sets $rc and $out
qs() { out=$(cd "$REPO" && PATH="$SPATH" DDP_BUILD_DIR="$FB" DDP_QUICKSTART_DIR="$TMP/qs" tools/quickstart "$@" 2>&1); rc=$?; }
trainer_args() { sed -n '/train_resnet18$/,$p' "$TMP/mpirun.args" | tail -n +2 | tr '\n' ' '; }

# ---- tools/quickstart ------------------------------------------------------------------------------
qs
check "quickstart (stand-ins): exit 0, the accuracy printed" \
  bash -c '[[ $1 -eq 0 && $2 == *"test accuracy (top-1, 10,000 images): 90.45%"* ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out"
FAKE_TRAIN=noeval DDP_TRAIN_ARGS="--max-steps 2 --no-eval" qs
check "quickstart, no evaluation record (--no-eval): exit 1, says so" \
  bash -c '[[ $1 -eq 1 && $2 == *"holds no evaluation record"*"--no-eval"* ]]' _ "$rc" "$out"
FAKE_TRAIN=fail qs
check "quickstart, train_resnet18 fails: its exit code, said" \
  bash -c '[[ $1 -eq 2 && $2 == *"train_resnet18 (mpirun) exited with 2"* ]]' _ "$rc" "$out"
for args in "--long --synthetic" "--synthetic --long"; do
  # shellcheck disable=SC2086  # two words meant
  qs $args
  check "quickstart $args: refused (exit 2)" bash -c '[[ $1 -eq 2 && $2 == *"--long and --synthetic"* ]]' _ "$rc" "$out"
done
for jobs in 0 -1 abc; do
  rm -f "$TMP/cmake.args"
  DDP_JOBS=$jobs qs
  check "quickstart DDP_JOBS=$jobs: exit 2, named, nothing built" \
    bash -c '[[ $1 -eq 2 && $2 == *"DDP_JOBS"*"'\''$3'\''"* && ! -e $4 ]]' _ "$rc" "$out" "$jobs" "$TMP/cmake.args"
done
for np in 0 3 1000 abc; do
  DDP_NP=$np qs
  check "quickstart DDP_NP=$np: exit 2, names DDP_NP and the batch of 128" \
    bash -c '[[ $1 -eq 2 && $2 == *"DDP_NP must be"*"divides the global batch of 128"*"'\''$3'\''"* ]]' _ "$rc" "$out" "$np"
done
DDP_NP=4 qs
check "quickstart DDP_NP=4: mpirun -np 4, --batch-size 32 (global 128)" \
  bash -c '[[ $1 -eq 0 && $(tr "\n" " " <"$2") == "-np 4 "* && $3 == *"--batch-size 32 "* ]]' _ "$rc" "$TMP/mpirun.args" "$(trainer_args)"
DDP_TRAIN_ARGS="--epochs 1 --lr=0.2 --nesterov" qs
a=$(trainer_args)
check "quickstart DDP_TRAIN_ARGS replaces the recipe's --epochs, --lr and --nesterov (each given once)" \
  bash -c '[[ $1 -eq 0 && $2 != *"--epochs 2 "* && $2 != *"--lr 0.1 "* && $2 == *"--epochs 1 --lr=0.2 --nesterov "* &&
             $(grep -o -- "--nesterov" <<<"$2" | wc -l) -eq 1 && $2 == *"--lr-schedule onecycle "* ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$a"
DDP_TRAIN_ARGS="--jsonl /tmp/x.jsonl" qs
check "quickstart DDP_TRAIN_ARGS --jsonl: refused (the script reads its own)" \
  bash -c '[[ $1 -eq 2 && $2 == *"DDP_TRAIN_ARGS cannot set --jsonl"* ]]' _ "$rc" "$out"

# SIGTERM to the script alone: passed on to mpirun as SIGUSR1 (the ranks checkpoint and exit 0), no orphan
rm -f "$TMP/mpirun.pid" "$TMP/mpirun.signals"
(cd "$REPO" && exec env PATH="$SPATH" FAKE_MPI=hang DDP_BUILD_DIR="$FB" DDP_QUICKSTART_DIR="$TMP/qs" tools/quickstart --synthetic \
  >"$TMP/qs-term.log" 2>&1) &
qpid=$!
for ((i = 0; i < 100; i++)); do [[ -s $TMP/mpirun.pid ]] && break; sleep 0.1; done
sleep 0.3
kill -TERM "$qpid"
wait "$qpid"; rc=$?
mpid=$(cat "$TMP/mpirun.pid" 2>/dev/null)
sleep 0.2
check "quickstart killed with SIGTERM: mpirun got SIGUSR1, exited; the script says so and exits 143" \
  bash -c '[[ $1 -eq 143 && $(cat "$2" 2>/dev/null) == USR1 && -n $3 ]] && ! kill -0 "$3" 2>/dev/null &&
           grep -q "stopped by SIGTERM" "$4" || { cat "$4"; false; }' _ "$rc" "$TMP/mpirun.signals" "$mpid" "$TMP/qs-term.log"
[[ -n $mpid ]] && kill "$mpid" 2>/dev/null  # an orphan left by a broken script

# ---- tools/test ------------------------------------------------------------------------------------
# tt [ARGS...]: tools/test of the fake repository; sets $rc and $out
tt() { rm -f "$TMP/ctest.args"; out=$(cd "$REPO" && PATH="$SPATH" DDP_BUILD_DIR=${TT_BUILD:-$TMP/tb} tools/test "$@" 2>&1); rc=$?; }
ctest_args() { cat "$TMP/ctest.args" 2>/dev/null; }
tt -R foo --fast
check "tools/test -R foo --fast: ctest gets -LE slow and -R foo" \
  bash -c '[[ $1 -eq 0 && $2 == *"-LE slow"* && $2 == *"-R foo"* ]]' _ "$rc" "$(ctest_args)"
for bad in --slow --bogus-flag; do
  tt "$bad"
  check "tools/test $bad: exit 2, named, ctest not run" \
    bash -c '[[ $1 -eq 2 && $2 == *"'\''$3'\''"* && ! -e $4 ]]' _ "$rc" "$out" "$bad" "$TMP/ctest.args"
done
DDP_JOBS=abc tt
check "tools/test DDP_JOBS=abc: exit 2, named" bash -c '[[ $1 -eq 2 && $2 == *"DDP_JOBS"* ]]' _ "$rc" "$out"
touch "$TMP/afile"
TT_BUILD="$TMP/afile/b" tt
check "tools/test with a build dir that cannot be made: exit 2, one clear line" \
  bash -c '[[ $1 -eq 2 && $2 == *"cannot create the build directory"* && $2 != *"No such file"* ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out"
tt
check "tools/test: the cmake log inside the build dir, nothing beside it" \
  bash -c '[[ $1 -eq 0 && -f $2/tb/tools-test-cmake.log && ! -e $2/tb.cmake.log ]]' _ "$rc" "$TMP"

# ---- tools/setup: root or sudo only to install ---------------------------------------------------------
# A fake repository whose .deps are complete, a dpkg-query stand-in, a PATH without sudo, a user other than root.
SREPO="$TMP/srepo"
mkdir -p "$SREPO/tools" "$SREPO/.deps/cudnn_frontend/include" "$SREPO/.deps/pytb" "$TMP/spath"
cp "$ROOT/tools/setup" "$SREPO/tools/"
: >"$SREPO/.deps/cudnn_frontend/include/cudnn_frontend.h"
printf '%s' "$(sed -n 's/^TB_WHEELS=(\(.*\))$/\1/p' "$ROOT/tools/setup")" >"$SREPO/.deps/pytb/.complete"
for t in bash id grep cat dirname mktemp rm env; do ln -sf "$(command -v "$t")" "$TMP/spath/$t"; done
printf '#!/bin/bash\n[[ -n ${DPKG_LOG:-} ]] && echo "$*" >>"$DPKG_LOG"\n[[ -n ${FAKE_MISSING:-} && " $* " == *" $FAKE_MISSING "* ]] && exit 1\nprintf "install ok installed"\n' >"$TMP/spath/dpkg-query"
chmod +x "$TMP/spath/dpkg-query"
# --help and a bad argument install nothing (not even a package check): help or a usage line, exit 0 / 2.
for a in --help -h; do
  : >"$TMP/dpkg.log"
  out=$(env PATH="$TMP/spath" DPKG_LOG="$TMP/dpkg.log" FAKE_MISSING=cmake bash "$SREPO/tools/setup" "$a" 2>&1); rc=$?
  check "setup $a: exit 0, says what it installs, where and that it needs root or sudo; checks nothing" \
    bash -c '[[ $1 -eq 0 && $2 == *"usage: tools/setup"* && $2 == *libhdf5-dev* && $2 == *.deps/* && $2 == *sudo* && ! -s $3 ]] ||
      { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$TMP/dpkg.log"
done
for a in --bogus "--help --bogus" x; do
  : >"$TMP/dpkg.log"
  # shellcheck disable=SC2086  # "--help --bogus": two arguments
  out=$(env PATH="$TMP/spath" DPKG_LOG="$TMP/dpkg.log" FAKE_MISSING=cmake bash "$SREPO/tools/setup" $a 2>&1); rc=$?
  check "setup $a: refused with exit 2 and a usage line, nothing run" \
    bash -c '[[ $1 -eq 2 && $2 == *"unknown argument"* && $2 == *"usage: tools/setup [--help]"* && ! -s $3 ]] ||
      { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$TMP/dpkg.log"
done
as_user=()
if [[ $(id -u) -eq 0 ]]; then
  command -v setpriv >/dev/null && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  chmod 755 "$TMP"  # the other user must reach the fake repository
fi
if [[ $(id -u) -ne 0 || ${#as_user[@]} -gt 0 ]]; then
  out=$("${as_user[@]}" env PATH="$TMP/spath" bash "$SREPO/tools/setup" 2>&1); rc=$?
  check "setup, not root, no sudo, nothing missing: exit 0" bash -c '[[ $1 -eq 0 ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out"
  out=$("${as_user[@]}" env PATH="$TMP/spath" FAKE_MISSING=cmake bash "$SREPO/tools/setup" 2>&1); rc=$?
  check "setup, not root, no sudo, cmake missing: exit 1, names the package and root" \
    bash -c '[[ $1 -eq 1 && $2 == *"(cmake)"*"needs root"* ]]' _ "$rc" "$out"
else
  printf 'NOTE root without setpriv: the setup checks as another user are skipped\n'
fi
chmod 700 "$TMP"

# ---- tools/bench: bad arguments refused up front (one line naming the argument, non-zero exit), --help ------
FAKEB="$TMP/benchbuild"
mkdir -p "$FAKEB"
# bench_bad DESCRIPTION WORD CMD...: CMD exits non-zero within 60 s, saying WORD, with no traceback, no -nan
bench_bad() {
  local d=$1 w=$2 o r
  shift 2
  o=$(timeout 60 "$@" 2>&1 </dev/null); r=$?
  check "$d: refused, names $w" bash -c '[[ $1 -ne 0 && $1 -ne 124 && $2 == *"$3"* && $2 != *Traceback* && $2 != *nan* ]] ||
    { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$r" "$o" "$w"
}
B=$ROOT/tools/bench
for s in allreduce.sh overlap.sh pack_bench.sh loader_vs_torchvision.sh ddp_cpu_train.sh cpu_train.sh; do
  o=$("$B/$s" --help 2>&1); r=$?
  check "$s --help: usage, exit 0" bash -c '[[ $1 -eq 0 && $2 == *"tools/bench/$3"* ]]' _ "$r" "$o" "$s"
done
bench_bad "allreduce.sh BUILD --bogus" "'--bogus'" "$B/allreduce.sh" "$FAKEB" --bogus
bench_bad "allreduce.sh /nonexistent" "/nonexistent" "$B/allreduce.sh" /nonexistent
bench_bad "overlap.sh BUILD abc" ITERS "$B/overlap.sh" "$FAKEB" abc
bench_bad "overlap.sh BUILD 5 8 16" SIZE "$B/overlap.sh" "$FAKEB" 5 8 16
for n in abc 0 -5; do
  bench_bad "pack_bench.sh BUILD $n" N_IMAGES "$B/pack_bench.sh" "$FAKEB" "$n"
done
for n in abc 0 20; do
  bench_bad "loader_vs_torchvision.sh BUILD $n" N_IMAGES "$B/loader_vs_torchvision.sh" "$FAKEB" "$n"
done
bench_bad "loader_vs_torchvision.sh ROUNDS=0" ROUNDS "$B/loader_vs_torchvision.sh" "$FAKEB" 400 2 0
for v in "RANKS=0" "RANKS=abc" "ITERS=0" "ROUNDS=0" "ITERS=7"; do
  bench_bad "ddp_cpu_train.sh $v" "${v%%=*}" env "$v" DDP_BUILD_DIR="$FAKEB" "$B/ddp_cpu_train.sh"
done
for f in loader_make_jpegs.py loader_torchvision.py pack_pil.py; do
  check "$f is executable (it has a shebang)" test -x "$B/$f"
done
if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  bench_bad "torch_cpu_ddp.py --ranks 0" "--ranks" /usr/bin/python3 "$B/torch_cpu_ddp.py" --ranks 0
  bench_bad "torch_cpu_train.py --batch 0" "--batch" /usr/bin/python3 "$B/torch_cpu_train.py" --batch 0
  bench_bad "cpu_ops.py /nonexistent 32 8" "/nonexistent" /usr/bin/python3 "$B/cpu_ops.py" /nonexistent 32 8
else
  printf 'NOTE /usr/bin/python3 without torch: the PyTorch peers'"'"' argument checks are skipped\n'
fi
LB=$BUILD/data-prep/loader_bench
if [[ -x $LB ]]; then
  for a in "--epochs 0 --seconds 0" "--workers -1" "--seconds -1" "--batch 0"; do
    # shellcheck disable=SC2086  # the flags are meant to split
    bench_bad "loader_bench $a" "${a%% *}" "$LB" --shards "$TMP" $a
  done
  bench_bad "loader_bench --epochs 1 2" "unexpected argument '2'" "$LB" --shards "$TMP" --epochs 1 2
  if [[ -x $BUILD/data-prep/inspect_shards ]]; then
    bench_bad "inspect_shards --show -1" "--show" "$BUILD/data-prep/inspect_shards" --show -1 "$TMP"
  fi
  if [[ -x $BUILD/data-prep/make_bench_jpegs && -x $BUILD/data-prep/pack_imagenet ]]; then
    "$BUILD/data-prep/make_bench_jpegs" "$TMP/lbj" 12 --classes 2 --threads 1 >/dev/null 2>&1
    "$BUILD/data-prep/pack_imagenet" --input "$TMP/lbj" --output "$TMP/lbs" --shards 1 --splits train --no-progress >/dev/null 2>&1
    bench_bad "loader_bench on 12 images (less than a batch)" "fewer images than one batch" "$LB" --shards "$TMP/lbs" --seconds 0
  fi
else
  printf 'NOTE no %s: its argument checks are skipped (build it first)\n' "$LB"
fi

# docs/USAGE.md shows train_resnet18 --help in full (80 columns): it must be what the program prints.
TR=$BUILD/src/apps/train_resnet18
if [[ -x $TR ]]; then
  doc=$(awk '/^## All flags/ { f = 1; next } f && /^```/ { if (in_block) exit; in_block = 1; next } in_block' "$ROOT/docs/USAGE.md")
  check "docs/USAGE.md's flag list is train_resnet18 --help's output (regenerate it from the program)" \
    bash -c 'diff <(printf "%s\n" "$1") <(COLUMNS=80 "$2" --help)' _ "$doc" "$TR"
else
  printf 'NOTE no %s: docs/USAGE.md'"'"'s flag list is not compared with it\n' "$TR"
fi

if ((FAILS)); then printf '%d check(s) FAILED\n' "$FAILS"; exit 1; fi
echo "all checks passed"
