#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2012  # single-quoted bash -c bodies, ls of a tiny fixed dir: meant as written
# Tests of the GPU-host tooling that run on a machine WITHOUT a GPU:
#   tools/gpu_check.sh, tools/bundle_deps, tools/bench/torch_gpu_train.py, data-prep/make_bench_jpegs.
# A fake GPU host (stand-ins for nvidia-smi, the PyTorch python, bench_cuda_train and gtest binaries) drives
# gpu_check.sh through every step, so its parsing, counting, table and exit codes are checked here; the
# real thing runs on a GPU host only. bundle_deps' glibc floor (2.34) is checked on the real build's bundle
# and on small programs built here; tools/glibc_compat's library through glibc_compat_check.c, with
# fake_getrandom.c preloaded for the kernel's awkward answers. The libstdc++ fallback (lib/cxx-fallback) is
# checked on the real build's bundle against a stand-in GCC 11 libstdc++ built here and this machine's own.
#
# Usage: tests/tools/test_scripts.sh [BUILD_DIR]
#   BUILD_DIR (optional) a build whose test binaries bundle_deps is tried on, and whose make_bench_jpegs and
#             pack_imagenet are run (default: build, if present).
# Needs: bash, shellcheck, python3 (json), ldd, strip, objdump, patchelf, cc. /usr/bin/python3 with torch (CPU)
# for the peer's smoke test; that part is skipped with a note when it is absent.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$ROOT/build}
# shellcheck source-path=SCRIPTDIR source=harness.sh
source "$ROOT/tests/tools/harness.sh"
PY=$(command -v python3 || echo /usr/bin/python3)
jget() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }

# ---- shellcheck ------------------------------------------------------------------------------------
if command -v shellcheck >/dev/null; then
  check "shellcheck gpu_check.sh, gpu_profile.sh, bundle_deps, this test" \
    shellcheck -x "$ROOT/tools/gpu_check.sh" "$ROOT/tools/gpu_profile.sh" "$ROOT/tools/bundle_deps" \
    "$ROOT/tests/tools/test_scripts.sh"
else
  fail "shellcheck not installed (tools/setup installs it)"
fi

# ---- gpu_check.sh on a machine with no GPU: a clear message, exit 2 -------------------------------
NOGPU_PATH="$TMP/nogpu-bin"
mkdir -p "$NOGPU_PATH"
for t in bash env sed grep head tail cut tr wc date mkdir rm mv cat tee timeout ldd od paste sort xargs uname tar gzip dirname basename kill sleep; do
  p=$(command -v "$t") && ln -sf "$p" "$NOGPU_PATH/$t"
done
ln -sf "$PY" "$NOGPU_PATH/python3"
out=$(PATH="$NOGPU_PATH" OUT="" "$ROOT/tools/gpu_check.sh" --out "$TMP/nogpu" 2>&1); rc=$?
check "no GPU: exit 2" test "$rc" -eq 2
check "no GPU: says 'no NVIDIA GPU/driver found'" grep -q 'no NVIDIA GPU/driver found' <<<"$out"
check "no GPU: last line names the cause" grep -q 'STOPPED: no NVIDIA GPU/driver found' <<<"$(tail -1 <<<"$out")"
check "no GPU: summary.json written, passed=false" test "$(jget "$TMP/nogpu/summary.json" 'd["passed"]')" = False
check "no GPU: the cause is the one problem listed" test "$(jget "$TMP/nogpu/summary.json" 'len(d["problems"])')" = 1
# again into the same folder (a previous gpu_check's output is replaced), and with $OUT (logs.tar.gz) twice
out=$(PATH="$NOGPU_PATH" OUT="" "$ROOT/tools/gpu_check.sh" --out "$TMP/nogpu" 2>&1); rc=$?
check "no GPU, rerun into its own output folder: runs again (exit 2, no GPU)" \
  bash -c '[[ $1 -eq 2 && $2 == *"STOPPED: no NVIDIA GPU/driver found"* ]]' _ "$rc" "$out"
mkdir -p "$TMP/nogpu-out"
for _ in 1 2; do
  out=$(PATH="$NOGPU_PATH" OUT="$TMP/nogpu-out" "$ROOT/tools/gpu_check.sh" 2>&1); rc=$?
done
# (This failed now and then: gpu_check took its own logs.tar.gz for a stranger's, see tools/gpu_check.sh.)
check "no GPU, \$OUT set, run twice: the second replaces the first's three files" \
  bash -c '[[ $1 -eq 2 && $2 == *"STOPPED: no NVIDIA GPU"* && $(cd "$3" && ls | tr "\n" " ") == "gpu_check.log logs.tar.gz summary.json " ]] ||
           { printf "rc %s; files: %s; output ends:\n%s\n" "$1" "$(cd "$3" && ls -A | tr "\n" " ")" "$(tail -5 <<<"$2")"; false; }' _ \
  "$rc" "$out" "$TMP/nogpu-out"

# ---- the output folder: only what a previous gpu_check wrote is replaced; unwritable: one line, exit 2 --
for f in logs/app.log summary.json gpu_check.log logs.tar.gz prev/notes.txt; do
  d="$TMP/userout-${f//\//-}"
  mkdir -p "$d/logs" "$(dirname "$d/$f")" && echo "the user's own" >"$d/$f"
  out=$(PATH="$NOGPU_PATH" OUT="" "$ROOT/tools/gpu_check.sh" --out "$d" 2>&1); rc=$?
  check "--out DIR holding the user's own $f: exit 2, named, kept" \
    bash -c '[[ $1 -eq 2 && $2 == *"$5"*"refusing"* && $(cat "$3/$4") == "the user'"'"'s own" ]]' _ "$rc" "$out" "$d" "$f" "${f%%/*}"
done
mkdir -p "$TMP/ro-out" && chmod 555 "$TMP/ro-out"
as_user=()  # root writes anywhere: run as nobody to meet a folder it cannot write
if [[ $(id -u) -eq 0 ]]; then
  command -v setpriv >/dev/null && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  chmod 755 "$TMP"  # nobody must reach the folder
fi
if [[ $(id -u) -ne 0 || ${#as_user[@]} -gt 0 ]]; then
  # A copy in $TMP: the clone may sit in a folder nobody cannot enter (mktemp -d makes them 0700).
  cp "$ROOT/tools/gpu_check.sh" "$TMP/gpu_check_copy.sh" && chmod 755 "$TMP/gpu_check_copy.sh"
  out=$("${as_user[@]}" env PATH="$NOGPU_PATH" OUT="" "$TMP/gpu_check_copy.sh" --out "$TMP/ro-out" 2>&1); rc=$?
  check "--out on a folder it cannot write: exit 2, one line naming it" \
    bash -c '[[ $1 -eq 2 && $(wc -l <<<"$2") -eq 1 && $2 == *"cannot write to output directory '"'"'$3'"'"'"* ]] || { printf "%s\n" "$2"; false; }' _ \
    "$rc" "$out" "$TMP/ro-out"
else
  printf 'NOTE root without setpriv: the unwritable --out check is skipped\n'
fi
chmod 700 "$TMP"

# ---- argument errors -------------------------------------------------------------------------------
"$ROOT/tools/gpu_check.sh" --batch zero >/dev/null 2>&1; rc=$?
check "bad --batch: exit 2" test "$rc" -eq 2
for a in "--batch 99999999999999999999" "--batch 0" "--size 16" "--size 99999"; do
  # shellcheck disable=SC2086  # flag and value
  out=$("$ROOT/tools/gpu_check.sh" $a 2>&1); rc=$?
  check "gpu_check.sh $a: out of bounds, exit 2, one line naming the flag" \
    bash -c '[[ $1 -eq 2 && $(wc -l <<<"$2") -eq 1 && $2 == *"${3%% *} needs a whole number from"* ]]' _ "$rc" "$out" "$a"
done
out=$("$ROOT/tools/gpu_check.sh" --help); rc=$?
check "--help prints usage" bash -c '[[ $1 -eq 0 && $2 == *"Usage: tools/gpu_check.sh"* ]]' _ "$rc" "$out"
# gpu_profile.sh: its arguments, and a host without ncu (this one) named before anything runs
out=$("$ROOT/tools/gpu_profile.sh" --help); rc=$?
check "gpu_profile.sh --help prints usage" bash -c '[[ $1 -eq 0 && $2 == *"Usage: tools/gpu_profile.sh"* ]]' _ "$rc" "$out"
out=$("$ROOT/tools/gpu_profile.sh" --runs ours_fp16,bogus 2>&1); rc=$?
check "gpu_profile.sh --runs with an unknown run: exit 2, naming it" \
  bash -c '[[ $1 -eq 2 && $2 == *bogus* && $2 == *"is not a run"* ]]' _ "$rc" "$out"
if ! command -v ncu >/dev/null && [[ ! -x /usr/local/cuda/bin/ncu ]]; then
  out=$(PATH=/usr/bin:/bin "$ROOT/tools/gpu_profile.sh" --out "$TMP/prof" 2>&1); rc=$?
  check "gpu_profile.sh without ncu: exit 2, says so" bash -c '[[ $1 -eq 2 && $2 == *"no ncu"* ]]' _ "$rc" "$out"
fi

# ---- bundle_deps ---------------------------------------------------------------------------------
# The oldest glibc the bundle must load on (RHEL 9); tools/bundle_deps' GLIBC_FLOOR.
GLIBC_FLOOR=2.34
elf_files() {  # elf_files BUNDLE: every ELF file under its bin/ and lib/
  local f
  while IFS= read -r f; do [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == '177ELF' ]] && printf '%s\n' "$f"; done \
    < <(find "$1/bin" "$1/lib" -type f | sort)
}
glibc_over() {  # glibc_over FILE...: "NAME: GLIBC_x.y" per version above the floor in its symbols or requirements
  local f v
  for f in "$@"; do
    while read -r v; do
      [[ $(printf '%s\n' "${v#GLIBC_}" "$GLIBC_FLOOR" | sort -V | tail -1) != "$GLIBC_FLOOR" ]] && echo "${f##*/}: $v"
    done < <({ objdump -T "$f"; objdump -p "$f"; } 2>/dev/null | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sort -u)
  done
  return 0
}
glibc_needed() {  # glibc_needed FILE...: the highest GLIBC_x.y the loader will ask of the host's libc
  ver_needed GLIBC "$@"
}
ver_needed() {  # ver_needed PREFIX FILE...: the highest PREFIX_x.y among the files' version requirements
  local p=$1 f
  shift
  for f in "$@"; do objdump -p "$f" 2>/dev/null; done | awk -v p="$p" '$1 ~ /^0x/ && $4 ~ ("^" p "_[0-9.]+$") { print substr($4, length(p) + 2) }' | sort -V | tail -1
}
# old_libstdcxx DIR: a stand-in for RHEL 9's libstdc++ (GCC 11) in DIR: a shared object named libstdc++.so.6
# defining the versions GCC 11's defines (GLIBCXX_3.4 to 3.4.29, CXXABI_1.3 to 1.3.13), a dummy symbol each,
# and nothing newer. The loader checks versions before it binds a symbol, so a binary needing GLIBCXX_3.4.30
# is refused by it as by the real one ("version `GLIBCXX_3.4.30' not found"); a check below shows that.
old_libstdcxx() {
  local d=$1 v i=0
  mkdir -p "$d/src"
  : >"$d/src/old.c"
  : >"$d/src/old.map"
  for v in GLIBCXX_3.4 $(seq -f 'GLIBCXX_3.4.%g' 1 29) CXXABI_1.3 $(seq -f 'CXXABI_1.3.%g' 1 13); do
    printf 'int ddp_old_%d(void) { return %d; }\n' "$i" "$i" >>"$d/src/old.c"
    if ((i == 0)); then printf '%s { global: ddp_old_%d; local: *; };\n' "$v" "$i"; else printf '%s { global: ddp_old_%d; };\n' "$v" "$i"; fi >>"$d/src/old.map"
    i=$((i + 1))
  done
  cc -shared -fPIC -Wl,-soname,libstdc++.so.6 -Wl,--version-script,"$d/src/old.map" -o "$d/libstdc++.so.6" "$d/src/old.c"
}
# cxx_probe BIN: run after sourcing a bundle's env.sh. Prints the library path, env.sh's DDP_LIBSTDCXX, the
# libstdc++.so.6 that BIN resolves to (ldd), and BIN --help's exit code (every symbol bound at start), a line each.
cxx_probe() {
  local so rc
  so=$(ldd "$1" 2>&1 | awk '$1 == "libstdc++.so.6" { print $3 }')
  LD_BIND_NOW=1 "$1" --help >"$TMP/cxx_help.out" 2>&1; rc=$?
  printf '%s\n' "${LD_LIBRARY_PATH:-}" "${DDP_LIBSTDCXX:-}" "$so" "$rc"
}
BUNDLE_OK=0
testbin=""
if [[ -d $BUILD/tests ]]; then
  testbin=$(find "$BUILD/tests" -type f -name 'test_*' -executable -not -path '*/CMakeFiles/*' 2>/dev/null | head -1)
fi
if [[ -n $testbin ]]; then
  # unpacked, to look inside; the size limit applies to what travels (packed, below). --allow-stale: these
  # checks are about what is carried; a build edited while they run (a shared tree) must not fail them. The
  # refusal of a stale build is checked on a small CMake build of its own (below).
  "$ROOT/tools/bundle_deps" "$BUILD" "$TMP/bundle" --extra "$testbin" --no-pack --max-mb 1000 --allow-stale >"$TMP/bundle.log" 2>&1; rc=$?
  check "bundle_deps exits 0 on $BUILD (+ $(basename "$testbin"))" test "$rc" -eq 0
  check "bundle: MANIFEST with commit and binary" grep -q "^commit: " "$TMP/bundle/MANIFEST"
  check "bundle: binary copied" test -x "$TMP/bundle/bin/$(basename "$testbin")"
  if [[ -d $BUILD/tests/backend/cuda/emu ]]; then
    # The CUDA tests built against the CPU emulation would pass on a GPU host without touching the GPU.
    check "bundle: none of the CPU-emulation binaries (tests/backend/cuda/emu) carried" \
      bash -c '! ls "$1"/bin | grep -q "_emu$"' _ "$TMP/bundle"
  fi
  check "bundle: no glibc/libstdc++/CUDA libraries carried in lib/" \
    bash -c '! ls "$1"/lib | grep -Eq "^(libc|libm|libstdc\+\+|libgcc_s|libcudart|libcudnn|libnccl|libcublas)\.so"' _ "$TMP/bundle"
  check "bundle: env.sh passes shellcheck" shellcheck -s bash "$TMP/bundle/env.sh"
  # With env.sh, every carried file resolves (on this machine the CUDA runtime comes from the toolkit).
  # shellcheck source=/dev/null
  unresolved=$( (source "$TMP/bundle/env.sh"; for f in "$TMP"/bundle/bin/* "$TMP"/bundle/lib/*.so*; do ldd "$f" 2>&1 | grep 'not found'; done) )
  check "bundle: every carried file resolves with env.sh${unresolved:+ ($unresolved)}" test -z "$unresolved"
  # The GPU host may have glibc 2.34 (RHEL 9): nothing carried may need more, by symbol or by requirement.
  mapfile -t elfs < <(elf_files "$TMP/bundle")
  over=$(glibc_over "${elfs[@]}")
  check "bundle: none of its ${#elfs[@]} ELF files needs a glibc above $GLIBC_FLOOR${over:+ (${over//$'\n'/, })}" test -z "$over"
  check "bundle: MANIFEST glibc_needed is what its files require ($(glibc_needed "${elfs[@]}")), at most $GLIBC_FLOOR" \
    bash -c '[[ -n $2 && $(sed -n "s/^glibc_needed: //p" "$1") == "$2" && $(printf "%s\n" "$2" "$3" | sort -V | tail -1) == "$3" ]]' _ \
    "$TMP/bundle/MANIFEST" "$(glibc_needed "${elfs[@]}")" "$GLIBC_FLOOR"
  if [[ -x $TMP/bundle/bin/train_resnet18 ]]; then
    # train_resnet18 loads libmpi, hence the bundle's (patched) libevent; LD_BIND_NOW resolves every symbol
    # at start, arc4random included. Where this machine's glibc has arc4random, the unversioned references
    # must bind to it (libc precedes the compat library in the lookup scope), else to the compat library.
    # shellcheck source=/dev/null
    out=$( (source "$TMP/bundle/env.sh"; LD_BIND_NOW=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT="$TMP/bind" "$TMP/bundle/bin/train_resnet18" --help 2>&1) ); rc=$?
    check "bundle: train_resnet18 --help runs through env.sh, every symbol bound at start (exit 0, usage)" \
      bash -c '[[ $1 -eq 0 && $2 == *"train_resnet18"*"--"* ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out"
    if grep -q '^glibc_compat_patched: lib/libevent' "$TMP/bundle/MANIFEST"; then
      want=libddp_glibc_compat.so.1
      libc_syms=$(objdump -T "$(ldd "$TMP/bundle/bin/train_resnet18" | awk '$1 == "libc.so.6" { print $3 }')" 2>/dev/null)
      grep -qw arc4random <<<"$libc_syms" && want=libc.so.6
      check "bundle: the patched libevent's arc4random binds to $want" \
        bash -c 'cat "$1".* | grep -E "binding file $2/lib/libevent_core[^ ]* \[0\] to [^ ]*/$3 \[0\]: normal symbol .arc4random.$" | grep -q .' _ \
        "$TMP/bind" "$TMP/bundle" "$want"
    fi
    # The GPU host has no Open MPI: train_resnet18 must start as a singleton on the bundle's plugins, help
    # files and settings alone (env.sh). Here the system's Open MPI is hidden in a private mount namespace,
    # so a plugin or a file the bundle lacks fails the run instead of being found on this machine.
    if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && unshare -m true 2>/dev/null; then
      out=$(env -i PATH=/usr/bin:/bin HOME="$TMP" unshare -m bash -c '
        for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/share/openmpi /etc/openmpi /usr/lib/x86_64-linux-gnu/pmix2; do
          [[ -d $d ]] && { mount -t tmpfs none "$d" || exit 90; }
        done
        source "$1/env.sh" && cd "$2" &&
          timeout 120 "$1/bin/train_resnet18" --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 \
            --backend cpu --threads 1 --batch-size 8 --epochs 1 --max-steps 3 --no-eval --checkpoint-dir singleton_ck \
            --progress lines --log-every 1' _ "$TMP/bundle" "$TMP" 2>&1); rc=$?
      check "bundle: train_resnet18 trains as a singleton with this machine's Open MPI hidden (3 steps, a checkpoint)" \
        bash -c '[[ $1 -eq 0 && $2 == *"step 3/8"* && -f $3/singleton_ck/ckpt-0000000003.h5 ]] || { printf "rc %s: %s\n" "$1" "${2: -600}"; false; }' \
        _ "$rc" "$out" "$TMP"
    else
      printf 'NOTE not root or no unshare -m: the bundled trainer is not run with the system Open MPI hidden\n'
    fi
  else
    printf 'NOTE no train_resnet18 in %s: the bundle'"'"'s libevent is not loaded by a real program here\n' "$BUILD"
  fi
  # libstdc++: GCC 12's travels in lib/cxx-fallback, and env.sh puts it on the path only where the host's
  # lacks a version the bundle needs (RHEL 9: GCC 11) or is missing; a newer or equal host one is kept.
  # Each env.sh below is sourced in a subshell of this script, so under set -u and pipefail.
  B="$TMP/bundle"
  check "bundle: carries lib/cxx-fallback/libstdc++.so.6, MANIFEST names it (cxx_fallback) and no longer as host_must_provide" \
    bash -c '[[ -f $1/lib/cxx-fallback/libstdc++.so.6 ]] && grep -q "^cxx_fallback: lib/cxx-fallback/libstdc++.so.6 <- /" "$1/MANIFEST" &&
             ! grep -q "^host_must_provide: .*libstdc++" "$1/MANIFEST" || { grep -E "^(cxx|host_must)" "$1/MANIFEST"; false; }' _ "$B"
  cxx_need=$(ver_needed GLIBCXX "${elfs[@]}")
  cxxabi_need=$(ver_needed CXXABI "${elfs[@]}")
  check "bundle: MANIFEST glibcxx_needed ($cxx_need) and cxxabi_needed ($cxxabi_need) are what bin/ and lib/ require" \
    bash -c '[[ -n $2 && $(sed -n "s/^glibcxx_needed: //p" "$1") == "$2" && $(sed -n "s/^cxxabi_needed: //p" "$1") == "$3" ]]' _ \
    "$B/MANIFEST" "$cxx_need" "$cxxabi_need"
  cxxbin=""
  for b in train_resnet18 pack_imagenet; do [[ -x $B/bin/$b ]] && { cxxbin=$B/bin/$b; break; }; done
  if [[ -z $cxxbin ]]; then
    printf 'NOTE no train_resnet18 or pack_imagenet in %s: the libstdc++ fallback is not run\n' "$BUILD"
  elif [[ $(printf '%s\n' "$cxx_need" 3.4.29 | sort -V | tail -1) == 3.4.29 ]]; then
    printf 'NOTE the bundle needs only GLIBCXX_%s: a GCC 11 libstdc++ has it, the fallback is not exercised\n' "$cxx_need"
  elif ! old_libstdcxx "$TMP/oldcxx" 2>"$TMP/oldcxx.log"; then
    fail "libstdc++ fallback: the stand-in old libstdc++ does not build ($(tr '\n' ' ' <"$TMP/oldcxx.log"))"
  else
    OLD=$TMP/oldcxx
    # The stand-in is honest: first in the path without the fallback, the loader refuses the binary.
    # shellcheck source=/dev/null
    out=$( (source "$B/env.sh" 2>/dev/null; LD_LIBRARY_PATH="$B/lib:$OLD" "$cxxbin" --help 2>&1) ); rc=$?
    check "stand-in GCC 11 libstdc++ first on the path, no fallback: ${cxxbin##*/} refused (GLIBCXX_$cxx_need not found)" \
      bash -c '[[ $1 -ne 0 && $2 == *"version \`GLIBCXX_$3'"'"' not found"* ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$cxx_need"
    # (b) DDP_HOST_LIBSTDCXX names it, and it is also first in the path the process would otherwise use.
    # shellcheck source=/dev/null
    mapfile -t r < <(export LD_LIBRARY_PATH=$OLD DDP_HOST_LIBSTDCXX=$OLD/libstdc++.so.6; source "$B/env.sh" 2>"$TMP/cxx.err"; cxx_probe "$cxxbin")
    check "DDP_HOST_LIBSTDCXX=old: lib/cxx-fallback right after lib/, one line on stderr, ${cxxbin##*/} --help runs with the fallback" \
      bash -c '[[ $1 == "$5/lib:$5/lib/cxx-fallback:"* && $2 == "$5/lib/cxx-fallback/libstdc++.so.6 (the bundle'"'"'s: "*"GLIBCXX_$7"* &&
               $3 == "$5/lib/cxx-fallback/libstdc++.so.6" && $4 == 0 && $(wc -l <"$6") -eq 1 && $(cat "$6") == *"$8/libstdc++.so.6 lacks GLIBCXX_$7"*"lib/cxx-fallback"* ]] ||
               { printf "path %s\nchoice %s\nresolved %s\nrc %s\nstderr: %s\n" "$1" "$2" "$3" "$4" "$(cat "$6")"; false; }' _ \
      "${r[@]:0:4}" "$B" "$TMP/cxx.err" "$cxx_need" "$OLD"
    # Found, without the override, as the loader would: first in the path, then in ldconfig's cache (a
    # stand-in ldconfig lists a 32-bit libstdc++ with every version first: only this machine's kind counts).
    # shellcheck source=/dev/null
    mapfile -t r < <(export LD_LIBRARY_PATH=$OLD; unset DDP_HOST_LIBSTDCXX; source "$B/env.sh" 2>/dev/null; cxx_probe "$cxxbin")
    check "old libstdc++ first in LD_LIBRARY_PATH: found, fallback used, ${cxxbin##*/} runs" \
      bash -c '[[ $1 == "$5/lib:$5/lib/cxx-fallback:"* && $2 == *"$6/libstdc++.so.6 lacks"* && $3 == "$5/lib/cxx-fallback/libstdc++.so.6" && $4 == 0 ]] ||
               { printf "path %s\nchoice %s\nresolved %s\nrc %s\n" "$1" "$2" "$3" "$4"; false; }' _ "${r[@]:0:4}" "$B" "$OLD"
    if [[ $(uname -m) == x86_64 ]]; then
      host_so=$(ldd "$cxxbin" | awk '$1 == "libstdc++.so.6" { print $3 }')
      mkdir -p "$TMP/fake-ldconfig"
      printf '#!/bin/sh\nprintf "3 libs found in cache\\n\\tlibstdc++.so.6 (libc6) => %s\\n\\tlibstdc++.so.6 (libc6,x86-64) => %s\\n\\tlibc.so.6 (libc6,x86-64) => /lib/libc.so.6\\n"\n' \
        "$host_so" "$OLD/libstdc++.so.6" >"$TMP/fake-ldconfig/ldconfig"
      chmod +x "$TMP/fake-ldconfig/ldconfig"
      # shellcheck source=/dev/null
      mapfile -t r < <(export PATH="$TMP/fake-ldconfig:$PATH"; unset LD_LIBRARY_PATH DDP_HOST_LIBSTDCXX; source "$B/env.sh" 2>/dev/null; cxx_probe "$cxxbin")
      check "old x86-64 libstdc++ in ldconfig's cache (after a 32-bit one): found, fallback used, ${cxxbin##*/} runs" \
        bash -c '[[ $1 == "$5/lib:$5/lib/cxx-fallback:"* && $2 == *"$6/libstdc++.so.6 lacks"* && $4 == 0 ]] ||
                 { printf "path %s\nchoice %s\nresolved %s\nrc %s\n" "$1" "$2" "$3" "$4"; false; }' _ "${r[@]:0:4}" "$B" "$OLD"
    fi
    # None at all: the fallback too.
    # shellcheck source=/dev/null
    mapfile -t r < <(export DDP_HOST_LIBSTDCXX=$TMP/no-such-dir/libstdc++.so.6; source "$B/env.sh" 2>/dev/null; cxx_probe "$cxxbin")
    check "no host libstdc++ (DDP_HOST_LIBSTDCXX names no file): fallback used, ${cxxbin##*/} runs" \
      bash -c '[[ $1 == "$5/lib:$5/lib/cxx-fallback:"* && $2 == *"no readable libstdc++.so.6"* && $3 == "$5/lib/cxx-fallback/libstdc++.so.6" && $4 == 0 ]] ||
               { printf "path %s\nchoice %s\nresolved %s\nrc %s\n" "$1" "$2" "$3" "$4"; false; }' _ "${r[@]:0:4}" "$B"
    # (c) This machine's own libstdc++ (the one the build used, so it has every version): kept, no fallback.
    # shellcheck source=/dev/null
    mapfile -t r < <(unset LD_LIBRARY_PATH DDP_HOST_LIBSTDCXX; source "$B/env.sh" 2>"$TMP/cxx.err"; cxx_probe "$cxxbin")
    check "this machine's libstdc++ (has GLIBCXX_$cxx_need): no fallback on the path, nothing on stderr, ${cxxbin##*/} runs with the host's" \
      bash -c '[[ -n $1 && $1 != *cxx-fallback* && $2 == *"(the host'"'"'s: it has GLIBCXX_$7"* && $3 == /* && $3 != "$5"/* && $4 == 0 && ! -s $6 ]] ||
               { printf "path %s\nchoice %s\nresolved %s\nrc %s\nstderr: %s\n" "$1" "$2" "$3" "$4" "$(cat "$6")"; false; }' _ \
      "${r[@]:0:4}" "$B" "$TMP/cxx.err" "$cxx_need"
  fi
  "$ROOT/tools/bundle_deps" "$BUILD" "$TMP/bundle-packed" --extra "$testbin" --pack --allow-stale >"$TMP/bundle-packed.log" 2>&1; rc=$?
  check "bundle_deps --pack: exit 0, MANIFEST and bundle.tar.xz only" \
    bash -c '[[ $1 -eq 0 ]] && [[ "$(cd "$2" && ls | tr "\n" " ")" == "MANIFEST bundle.tar.xz " ]]' _ "$rc" "$TMP/bundle-packed"
  kib=$(du -sk "$TMP/bundle-packed" | cut -f1)
  check "bundle_deps --pack: ${kib} KiB to carry, under 50 MiB" test "${kib:-999999}" -lt 51200
  check "bundle_deps --pack: archive holds bin/, lib/ and env.sh" \
    bash -c 'tar -tJf "$1" | grep -q "^bin/$2" && tar -tJf "$1" | grep -qx "env.sh"' _ "$TMP/bundle-packed/bundle.tar.xz" "$(basename "$testbin")"
  check "bundle_deps --pack: archive holds lib/cxx-fallback/libstdc++.so.6" \
    bash -c 'tar -tJf "$1" | grep -qx "lib/cxx-fallback/libstdc++.so.6"' _ "$TMP/bundle-packed/bundle.tar.xz"
  BUNDLE_OK=1
else
  printf 'NOTE no test binary under %s/tests: bundle_deps not exercised (build one first)\n' "$BUILD"
fi
"$ROOT/tools/bundle_deps" "$TMP/not-a-build" >/dev/null 2>&1; rc=$?
check "bundle_deps: missing build dir is an error" test "$rc" -ne 0

# The output folder: real paths are compared, and only what bundle_deps made is ever deleted. A fake repository
# (a copy of the script: its root is where the script lies) and a fake build (/bin/true as a GPU test, nvcc
# arch flags in a flags.make) keep a failure of these checks from costing anything real.
FREPO="$TMP/frepo"
mkdir -p "$FREPO/tools" "$FREPO/.git" && cp "$ROOT/tools/bundle_deps" "$FREPO/tools/" && echo keep >"$FREPO/.git/HEAD"
cp -r "$ROOT/tools/glibc_compat" "$ROOT/tools/lib" "$FREPO/tools/"
fake_build() {  # fake_build DIR: a CMake build with the GPU tests bundle_deps requires and CUDA arch flags
  mkdir -p "$1/tests/backend/cuda" "$1/tests/comm" "$1/CMakeFiles/x.dir"
  : >"$1/CMakeCache.txt"
  local t
  for t in test_fake_gpu test_cuda_ops test_cuda_model; do cp /bin/true "$1/tests/backend/cuda/$t"; done
  cp /bin/true "$1/tests/comm/test_comm_nccl"
  echo 'CUDA_FLAGS = -O3 --generate-code=arch=compute_90,code=[compute_90,sm_90]' >"$1/CMakeFiles/x.dir/flags.make"
}
FB="$FREPO/fb"
fake_build "$FB"
intact() { [[ -f $FREPO/.git/HEAD && -f $FREPO/tools/bundle_deps && -f $FB/CMakeCache.txt && -x $FB/tests/backend/cuda/test_fake_gpu ]]; }
refused_intact() { [[ $1 -ne 0 && $2 == *"refusing to use"* ]] && intact; }  # refused_intact RC OUTPUT
for dest in "$FREPO/" "$FREPO/tools/.." "$FB/" "$FREPO/fb/../fb" "$TMP" /; do
  out=$(cd "$FREPO" && HOME="$TMP/fhome" tools/bundle_deps fb "$dest" --no-pack 2>&1); rc=$?
  check "bundle_deps into '$dest' (the repository, the build, or above them): refused, nothing deleted" \
    refused_intact "$rc" "$out"
done
ln -s "$FB" "$TMP/link-to-build"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/link-to-build" --no-pack 2>&1); rc=$?
check "bundle_deps into a symlink to the build: refused, nothing deleted" refused_intact "$rc" "$out"
mkdir -p "$TMP/fhome/sub"
out=$(HOME="$TMP/fhome/sub/.." "$FREPO/tools/bundle_deps" "$FB" "$TMP/fhome" --no-pack 2>&1); rc=$?
check "bundle_deps into \$HOME: refused, nothing deleted" bash -c '[[ $1 -ne 0 && $2 == *"refusing to use"* && -d $3 ]]' _ "$rc" "$out" "$TMP/fhome/sub"
mkdir -p "$TMP/userdir" && echo mine >"$TMP/userdir/app.log"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/userdir" --no-pack 2>&1); rc=$?
check "bundle_deps into a non-empty folder without a bundle MANIFEST: refused, its file kept" \
  bash -c '[[ $1 -ne 0 && $2 == *"no MANIFEST of a previous bundle_deps"* && -f $3/app.log ]]' _ "$rc" "$out" "$TMP/userdir"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/fbundle" --no-pack 2>&1); rc=$?
check "bundle_deps of a fake build into a new folder: exit 0, the fake GPU test carried" \
  bash -c '[[ $1 -eq 0 && -x $3/bin/test_fake_gpu && -f $3/MANIFEST ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out" "$TMP/fbundle"
touch "$TMP/fbundle/bin/stale" "$TMP/fbundle/notes.txt"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/fbundle" --no-pack 2>&1); rc=$?
check "bundle_deps over a previous bundle holding another file: refused, the file kept" \
  bash -c '[[ $1 -ne 0 && $2 == *"notes.txt"* && -f $3/notes.txt ]]' _ "$rc" "$out" "$TMP/fbundle"
rm "$TMP/fbundle/notes.txt"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/fbundle" --no-pack 2>&1); rc=$?
check "bundle_deps over a previous bundle: replaced (exit 0, its old bin/ entry gone)" \
  bash -c '[[ $1 -eq 0 && -x $2/bin/test_fake_gpu && ! -e $2/bin/stale ]]' _ "$rc" "$TMP/fbundle"
# No test_comm_nccl (or another of the three GPU tests): refused before anything is written.
FNOT="$TMP/fb-notests"
fake_build "$FNOT" && rm "$FNOT/tests/comm/test_comm_nccl"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FNOT" "$TMP/notests-bundle" --no-pack 2>&1); rc=$?
check "bundle_deps of a build without test_comm_nccl: exit 1, names it, no folder made" \
  bash -c '[[ $1 -eq 1 && $2 == *"has no test_comm_nccl"* && $2 != *"test_cuda_ops"* && ! -e $3 ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ \
  "$rc" "$out" "$TMP/notests-bundle"

# A real (tiny) CMake build, configured from a git checkout of its own, not this script's: MANIFEST's commit
# is that checkout's, and a binary older than its sources is refused, named, before anything is written.
MINI="$TMP/mini-src" MINIB="$TMP/mini-build"
mkdir -p "$MINI"
cat >"$MINI/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(mini C)
add_executable(test_cuda_ops ops.c)
add_executable(test_cuda_model main.c)
add_executable(test_comm_nccl main.c)
add_executable(bench_cuda_train main.c)
set_target_properties(test_cuda_ops test_cuda_model PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/backend/cuda)
set_target_properties(test_comm_nccl PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/comm)
set_target_properties(bench_cuda_train PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/src/apps)
EOF
printf '#define MINI 0\n' >"$MINI/mini.h"
printf '#include "mini.h"\nint main(void) { return MINI; }\n' >"$MINI/ops.c"
printf 'int main(void) { return 0; }\n' >"$MINI/main.c"
gitq() { git -C "$MINI" -c user.name=t -c user.email=t@example.com "$@" >/dev/null 2>&1; }
if command -v cmake >/dev/null && command -v git >/dev/null && gitq init && gitq add -A && gitq commit -m mini &&
    cmake -S "$MINI" -B "$MINIB" -G "Unix Makefiles" >"$TMP/mini.log" 2>&1 && cmake --build "$MINIB" >>"$TMP/mini.log" 2>&1; then
  # the CUDA arch flags bundle_deps looks for when the binaries hold no GPU code
  mkdir -p "$MINIB/CMakeFiles/fakecuda.dir"
  echo 'CUDA_FLAGS = --generate-code=arch=compute_90,code=[compute_90,sm_90]' >"$MINIB/CMakeFiles/fakecuda.dir/flags.make"
  mini_head=$(git -C "$MINI" rev-parse HEAD)
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" "$TMP/mini-bundle" --no-pack 2>&1); rc=$?
  check "bundle_deps of a build configured from another checkout: MANIFEST commit is that checkout's, clean, up to date" \
    bash -c '[[ $1 -eq 0 && $(sed -n "s/^commit: //p" "$3/MANIFEST") == "$4" && $(sed -n "s/^source_dir: //p" "$3/MANIFEST") == "$5" &&
               $(grep -c "^build_up_to_date: yes" "$3/MANIFEST") -eq 1 ]] ||
             { printf "rc %s: %s\n" "$1" "$2"; grep -E "^(commit|source_dir|build_)" "$3/MANIFEST"; false; }' _ \
    "$rc" "$out" "$TMP/mini-bundle" "$mini_head" "$MINI"
  check "bundle_deps: MANIFEST source_tree is the tree of that clean checkout's files" \
    test "$(sed -n 's/^source_tree: //p' "$TMP/mini-bundle/MANIFEST")" = "$(git -C "$MINI" rev-parse 'HEAD^{tree}')"
  # An untracked file counts (the tree changes); over 64 MiB of untracked files, nothing is hashed.
  echo "// new" >"$MINI/new.h"
  check "source_tree: an untracked file changes the tree" \
    bash -c 'source "$1/tools/lib/source_tree.sh" && t=$(source_tree "$2") && [[ -n $t && $t != $(git -C "$2" rev-parse "HEAD^{tree}") ]]' \
    _ "$ROOT" "$MINI"
  truncate -s 70M "$MINI/data.bin"
  check "source_tree: over 64 MiB of untracked files: nothing printed, status 1" \
    bash -c 'source "$1/tools/lib/source_tree.sh"; t=$(source_tree "$2"); [[ $? -eq 1 && -z $t ]]' _ "$ROOT" "$MINI"
  rm -f "$MINI/new.h" "$MINI/data.bin"
  # A header edited after the build folder's first build, which make -n cannot see yet (CMake gives make
  # the header dependencies at its next run): found from the compiler's .o.d files.
  sleep 1
  printf '#define MINI 1\n' >"$MINI/mini.h"
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" "$TMP/mini-stale" --no-pack 2>&1); rc=$?
  check "bundle_deps after a header edit following the first build: exit 1, test_cuda_ops named with mini.h, nothing written" \
    bash -c '[[ $1 -eq 1 && $2 == *"test_cuda_ops ($4 is newer than ops.c.o)"* && $2 != *"test_cuda_model ("* && ! -e $3 ]] ||
             { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$TMP/mini-stale" "$MINI/mini.h"
  # an edit after the build (a pull, say): refused, the stale binary named, the up-to-date ones not
  printf '#include "mini.h"\nint main(void) { return 1; }\n' >"$MINI/ops.c"
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" "$TMP/mini-stale" --no-pack 2>&1); rc=$?
  check "bundle_deps of a build older than its sources: exit 1, names test_cuda_ops (not the others), nothing written" \
    bash -c '[[ $1 -eq 1 && $2 == *"older than their sources"*"test_cuda_ops (would run: Building C object"* && $2 != *"test_cuda_model ("* && ! -e $3 ]] ||
             { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$TMP/mini-stale"
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" "$TMP/mini-stale" --no-pack --allow-stale 2>&1); rc=$?
  check "--allow-stale: exit 0, a warning, MANIFEST build_stale names it, commit marked dirty" \
    bash -c '[[ $1 -eq 0 && $2 == *"WARNING: --allow-stale"* && $(sed -n "s/^build_stale: //p" "$3/MANIFEST") == "test_cuda_ops "* &&
               $(sed -n "s/^commit: //p" "$3/MANIFEST") == "$4 (working tree had uncommitted changes)" ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ \
    "$rc" "$out" "$TMP/mini-stale" "$mini_head"
  # an output folder inside the build: refused up front (a second run would find the bundle's bin/ as binaries)
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" "$MINIB/bundle" --no-pack --allow-stale 2>&1); rc=$?
  check "bundle_deps into a folder inside the build: refused, said, nothing made" \
    bash -c '[[ $1 -ne 0 && $2 == *"inside the build"* && ! -e $3 ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out" "$MINIB/bundle"
  # the default output folder is the repository root's .bundle (where gpu_check.sh looks), whatever the cwd
  mkdir -p "$TMP/elsewhere"
  out=$(cd "$TMP/elsewhere" && HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$MINIB" --no-pack --allow-stale 2>&1); rc=$?
  check "bundle_deps without OUT_DIR, run from another folder: the bundle is <repo root>/.bundle" \
    bash -c '[[ $1 -eq 0 && -f $3/.bundle/MANIFEST && ! -e $4/.bundle ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ \
    "$rc" "$out" "$FREPO" "$TMP/elsewhere"
  rm -rf "$FREPO/.bundle"
else
  fail "the small CMake build for bundle_deps' checks does not build ($(tail -3 "$TMP/mini.log" 2>/dev/null | tr '\n' ' '))"
fi

# A CPU-only build (no GPU code, no nvcc arch flags): said clearly, nothing made. Over --max-mb: no bundle left.
FCPU="$TMP/fb-cpu"
fake_build "$FCPU" && rm -rf "$FCPU/CMakeFiles"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FCPU" "$TMP/cpu-bundle" --no-pack 2>&1); rc=$?
check "bundle_deps of a CPU-only build: exit 1, says it has no CUDA code, no folder made" \
  bash -c '[[ $1 -eq 1 && $2 == *"has no CUDA code"* && ! -e $3 ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out" "$TMP/cpu-bundle"
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/big-bundle" --no-pack --max-mb 0 2>&1); rc=$?
check "bundle_deps over --max-mb: exit 1, said, the too-big bundle removed" \
  bash -c '[[ $1 -eq 1 && $2 == *"over --max-mb 0"* && ! -e $3 ]]' _ "$rc" "$out" "$TMP/big-bundle"

# ---- glibc above the floor: what tools/glibc_compat provides is patched, anything else refused ----------
# Two small programs built here: one takes arc4random_uniform and arc4random_buf, the other also
# pidfd_open, which glibc has since 2.36 and the compat library does not provide. Where this glibc is older
# than 2.36 they do not link, and the problem they stand for does not arise.
GC="$TMP/glibc"
mkdir -p "$GC"
printf '#include <stdio.h>\n#include <stdlib.h>\nint main(void) { unsigned char b[16]; arc4random_buf(b, sizeof b);\n  printf("%%u\\n", arc4random_uniform(10)); return 0; }\n' >"$GC/uses_arc4random.c"
printf '#include <stdlib.h>\nint pidfd_open(int, unsigned);\nint main(int c, char **v) { (void)v; return c > 5 ? pidfd_open(0, 0) : (int)arc4random_uniform(1); }\n' >"$GC/uses_pidfd.c"
if cc -o "$GC/uses_arc4random" "$GC/uses_arc4random.c" 2>"$GC/cc.log" && cc -o "$GC/uses_pidfd" "$GC/uses_pidfd.c" 2>>"$GC/cc.log" \
    && [[ -n $(glibc_over "$GC/uses_arc4random") ]]; then
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/gc-bundle" --extra "$GC/uses_arc4random" --no-pack 2>&1); rc=$?
  check "bundle_deps with a program taking arc4random*@GLIBC_2.36: exit 0, MANIFEST names it and what was patched" \
    bash -c '[[ $1 -eq 0 && -f $3/lib/libddp_glibc_compat.so.1 ]] &&
             grep -qx "glibc_compat_patched: bin/uses_arc4random (arc4random_buf arc4random_uniform)" "$3/MANIFEST" ||
             { printf "%s\n" "$2"; grep "^glibc" "$3/MANIFEST"; false; }' _ "$rc" "$out" "$TMP/gc-bundle"
  mapfile -t elfs < <(elf_files "$TMP/gc-bundle")
  over=$(glibc_over "${elfs[@]}")
  check "bundle with that program: no file needs a glibc above $GLIBC_FLOOR${over:+ (${over//$'\n'/, })}, glibc_needed says so" \
    bash -c '[[ -z $1 && $(sed -n "s/^glibc_needed: //p" "$2") == "$3" ]]' _ "$over" "$TMP/gc-bundle/MANIFEST" "$(glibc_needed "${elfs[@]}")"
  # shellcheck source=/dev/null
  out=$( (source "$TMP/gc-bundle/env.sh"; LD_BIND_NOW=1 "$TMP/gc-bundle/bin/uses_arc4random") 2>&1); rc=$?
  check "the patched program runs from the bundle (exit 0, a number below 10)" \
    bash -c '[[ $1 -eq 0 && $2 =~ ^[0-9]$ ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out"
  # The compat library itself, as a host without arc4random would use it: its own functions, glibc's
  # contract (filled buffers, uniform without modulo bias, interrupted and short reads continued, abort
  # with a message when the kernel gives nothing).
  lib="$TMP/gc-bundle/lib/libddp_glibc_compat.so.1"
  if [[ ! -f $lib ]]; then
    fail "compat library: lib/libddp_glibc_compat.so.1 is not in the bundle"
  elif cc -O2 -o "$GC/check" "$ROOT/tests/tools/glibc_compat_check.c" -ldl 2>>"$GC/cc.log" &&
      cc -O2 -fPIC -shared -o "$GC/fake_getrandom.so" "$ROOT/tests/tools/fake_getrandom.c" 2>>"$GC/cc.log"; then
    out=$("$GC/check" "$lib" 2>&1); rc=$?
    check "compat library: arc4random, arc4random_buf, arc4random_uniform (< n, unbiased) work" \
      bash -c '[[ $1 -eq 0 && $2 == OK ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out"
    out=$(LD_PRELOAD="$GC/fake_getrandom.so" FAKE_GETRANDOM=short "$GC/check" "$lib" fill 2>&1); rc=$?
    check "compat library: getrandom interrupted (EINTR) and short reads: buffer still filled" \
      bash -c '[[ $1 -eq 0 && $2 == OK ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out"
    out=$(LD_PRELOAD="$GC/fake_getrandom.so" FAKE_GETRANDOM=fail "$GC/check" "$lib" fill 2>&1); rc=$?
    check "compat library: getrandom fails: aborts (SIGABRT) saying it cannot get entropy" \
      bash -c '[[ $1 -eq 134 && $2 == *"cannot get entropy for arc4random"* ]] || { printf "rc %s: %s\n" "$1" "$2"; false; }' _ "$rc" "$out"
  else
    fail "compat library: its test programs do not build ($(tr '\n' ' ' <"$GC/cc.log"))"
  fi
  out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/gc-refused" --extra "$GC/uses_pidfd" --no-pack 2>&1); rc=$?
  check "bundle_deps with a program taking pidfd_open@GLIBC_2.36 (not provided): exit 1, names file and symbol, no bundle left" \
    bash -c '[[ $1 -eq 1 && $2 == *"bin/uses_pidfd: pidfd_open@GLIBC_2.36"* && $2 != *"arc4random_uniform@"* && $2 == *"does not provide"* && ! -e $3 ]] ||
             { printf "%s\n" "$2"; false; }' _ "$rc" "$out" "$TMP/gc-refused"
else
  printf 'NOTE this glibc has no arc4random or pidfd_open (older than 2.36): the glibc floor checks are skipped (%s)\n' \
    "$(tr '\n' ' ' <"$GC/cc.log")"
fi
out=$(HOME="$TMP/fhome" "$FREPO/tools/bundle_deps" "$FB" "$TMP/fbundle" --no-pack --max-mb 0 2>&1); rc=$?
check "bundle_deps over --max-mb into a previous bundle: exit 1, the folder left empty" \
  bash -c '[[ $1 -eq 1 && -d $2 && -z $(ls -A "$2") ]]' _ "$rc" "$TMP/fbundle"

# ---- make_bench_jpegs (the end-to-end step's images) ----------------------------------------------
MBJ="$BUILD/data-prep/make_bench_jpegs"
if [[ -x $MBJ ]]; then
  "$MBJ" "$TMP/mbj1" 12 --classes 5 --threads 1 >/dev/null 2>&1 && "$MBJ" "$TMP/mbj3" 12 --classes 5 --threads 3 >/dev/null 2>&1
  check "make_bench_jpegs: 12 files in 5 class folders" \
    test "$(find "$TMP/mbj1/train" -name 'img_*.JPEG' | wc -l) $(find "$TMP/mbj1/train" -mindepth 1 -type d | wc -l)" = "12 5"
  check "make_bench_jpegs: same images whatever the thread count" \
    bash -c 'diff <(cd "$1" && find . -type f | sort | xargs md5sum) <(cd "$2" && find . -type f | sort | xargs md5sum) >/dev/null' _ \
    "$TMP/mbj1" "$TMP/mbj3"
  "$MBJ" "$TMP/mbj-bad" 0 >/dev/null 2>&1; rc=$?
  check "make_bench_jpegs: N = 0 refused (exit 2)" test "$rc" -eq 2
  # into a folder that is not empty (an earlier, larger run): refused, the old files untouched
  before=$(cd "$TMP/mbj1" && find . -type f | sort | xargs md5sum)
  out=$("$MBJ" "$TMP/mbj1" 3 --classes 5 --threads 1 2>&1); rc=$?
  check "make_bench_jpegs into a non-empty folder: exit 2, said, nothing changed" \
    bash -c '[[ $1 -eq 2 && $2 == *"is not empty"* && $(cd "$3" && find . -type f | sort | xargs md5sum) == "$4" ]]' _ \
    "$rc" "$out" "$TMP/mbj1" "$before"
  mkdir -p "$TMP/mbj-empty"
  "$MBJ" "$TMP/mbj-empty" 2 --classes 2 --threads 1 >/dev/null 2>&1; rc=$?
  check "make_bench_jpegs into an empty folder (gpu_check's temporary one): exit 0" test "$rc" -eq 0
  if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import PIL' 2>/dev/null; then
    # Independent decoder (PIL): RGB baseline JPEGs about 500x375 (+-15%), natural-image sized (tens of KB).
    check "make_bench_jpegs: PIL decodes every file as RGB about 500x375, 30-150 KB" /usr/bin/python3 -c '
import glob, os, sys
from PIL import Image
files = glob.glob(sys.argv[1] + "/train/*/*.JPEG")
assert len(files) == 12, len(files)
for f in files:
    im = Image.open(f); im.load()
    assert im.format == "JPEG" and im.mode == "RGB", (f, im.format, im.mode)
    w, h = im.size
    assert 425 <= w <= 575 and 318 <= h <= 432, (f, im.size)
    assert 30e3 <= os.path.getsize(f) <= 150e3, (f, os.path.getsize(f))
' "$TMP/mbj1"
  fi
  if [[ -x $BUILD/data-prep/pack_imagenet ]]; then
    "$BUILD/data-prep/pack_imagenet" --input "$TMP/mbj1" --output "$TMP/mbj-shards" --shards 1 --splits train --no-progress \
      >"$TMP/mbj-pack.log" 2>&1; rc=$?
    check "make_bench_jpegs output packs (pack_imagenet exit 0, one shard)" \
      bash -c '[[ $1 -eq 0 && -f $2/train-00000-of-00001.h5 ]]' _ "$rc" "$TMP/mbj-shards"
  fi
else
  printf 'NOTE no %s: make_bench_jpegs not exercised (build it first)\n' "$MBJ"
fi

# ---- a fake GPU host drives gpu_check.sh through every step ---------------------------------------
FAKE="$TMP/fake"
mkdir -p "$FAKE/bin" "$FAKE/bundle/bin" "$FAKE/bundle/lib"
cat >"$FAKE/bin/nvidia-smi" <<'EOF'
#!/bin/bash
# stand-in for nvidia-smi
case " $* " in
  *" -L "*) echo "GPU 0: Fake H100 80GB HBM3 (UUID: GPU-00000000)" ;;
  *" -lms "*) while :; do echo "2026/11/28 07:00:00.000, 97, 20000, 1980, 600.0"; sleep 0.25; done ;;
  *"--query-gpu=name"*) echo "Fake H100 80GB HBM3, 81559, 580.159.04, 9.0" ;;
  *"--query-compute-apps"*) ;;
  *" -q "*) echo "fake -q output" ;;
  *) echo "| NVIDIA-SMI 580.159.04     Driver Version: 580.159.04     CUDA Version: ${FAKE_CUDA_VER:-13.0} |" ;;
esac
EOF
# A python whose PyTorch "sees a GPU": the probe is answered, the peer runs on the CPU at a tiny size.
cat >"$FAKE/bin/fakepy" <<EOF
#!/bin/bash
if [[ \${1:-} == - ]]; then
  script=\$(cat)
  if [[ \$script == *"torch.backends.cudnn.version()"* ]]; then
    tv='"torchvision": "fake"'
    [[ -n \${FAKE_NO_TORCHVISION:-} ]] && tv='"torchvision_error": "ModuleNotFoundError: No module named torchvision"'
    echo "{\"python\": \"3.12\", \"torch\": \"fake\", \$tv, \"torch_cuda\": \"13.0\", \"cuda_available\": true, \"torch_gpu\": \"Fake H100\", \"torch_cudnn\": 91900}"
    exit 0
  fi
  exec "$PY" - "\${@:2}" <<<"\$script"
fi
if [[ \${1:-} == *torch_gpu_train.py ]]; then
  printf '%s\n' "\${LD_LIBRARY_PATH-(unset)}" >>"$FAKE/peer_ld_library_path.txt"
  if [[ " \$* " == *" --compile "* ]]; then echo "torch.compile: fake failure" >&2; exit 3; fi
  if [[ -z \${FAKE_REAL_TORCH:-} ]]; then  # fast path: no torch import
    echo 'RESULT {"impl": "torch", "mode": "eager", "batch": 256, "img_per_s": 10000.0, "ms_per_step": 25.6, "peak_mem_mb": 8000, "loss_finite": true}'
    exit 0
  fi
  exec /usr/bin/python3 "\$@" --amp bf16 --device cpu --batch 2 --size 32 --classes 10 --warmup 1 --iters 2 --windows 2
fi
exec "$PY" "\$@"
EOF
cat >"$FAKE/bundle/bin/bench_cuda_train" <<'EOF'
#!/bin/bash
echo "bench_cuda_train (fake) $*"
[[ " $* " == *" --selftest "* ]] && { echo "selftest ok"; exit 0; }
sleep 1  # long enough for the utilisation sampler to take a few samples
g=""; [[ " $* " == *" --cuda-graph "* ]] && g=', "graph_img_per_s": 13440.0, "graph_over_eager": 1.05'
amp=fp16; while (($#)); do [[ $1 == --amp ]] && amp=$2; shift; done
echo "RESULT {\"amp\": \"$amp\", \"batch\": 256, \"img_per_s\": 12800.0, \"ms_per_step\": 20.0, \"peak_mem_mb\": 9000, \"host_ms_per_step\": 1.25$g}"
EOF
# train_resnet18, make_bench_jpegs and pack_imagenet stand-ins for the end-to-end step: the trainer writes
# JSONL records as the real one does (the first window slow: start-up), and a checkpoint.
cat >"$FAKE/bundle/bin/train_resnet18" <<'EOF'
#!/bin/bash
j=/dev/null; ck=""; steps=20; data=""; resume=""
while (($#)); do
  case $1 in
    --jsonl) j=$2; shift ;; --checkpoint-dir) ck=$2; shift ;; --max-steps) steps=$2; shift ;; --data) data=$2; shift ;;
    --resume) resume=$2; shift ;;
  esac
  shift
done
start=0
if [[ -n $resume ]]; then  # as the trainer: the newest checkpoint, its step and loss scale named
  last=$(ls "$ck"/ckpt-*.h5 2>/dev/null | tail -1)
  [[ -n $last ]] || { echo "error: no checkpoint in '$ck'" >&2; exit 1; }
  start=$(basename "$last" .h5); start=$((10#${start#ckpt-}))
  echo "[07:00:00 rank 0/1 info] resumed from $last: epoch 13, step 8 of the epoch, global step $start, loss scale ${FAKE_RESUME_SCALE:-32768}"
fi
ips=11000 loss=6.9
# The second of gpu_check's two --deterministic runs logs another loss when asked (a run that did not repeat).
[[ $ck == */det2 && -n ${FAKE_DET_DIFFER:-} ]] && loss=6.8
if [[ $data != synthetic ]]; then
  ips=7000
  [[ -f $data/train-00000-of-00001.h5 ]] || { echo "error: no shards in '$data'" >&2; exit 1; }
fi
sleep 1
for ((s = start + 10; s <= steps; s += 10)); do
  echo "{\"type\": \"train\", \"step\": $s, \"loss\": $loss, \"img_per_s\": $( ((s == 10)) && echo 2000 || echo "$ips"), \"gpu_util\": 95}" >>"$j"
done
echo "{\"type\": \"summary\", \"steps\": $((steps - start)), \"global_step\": $steps, \"img_per_s\": 9000, \"peak_device_bytes\": 10485760000}" >>"$j"
if [[ -n $ck ]]; then
  mkdir -p "$ck" && f="$ck/$(printf 'ckpt-%010d.h5' "$steps")" && touch "$f"
  echo "[07:00:01 rank 0/1 info] checkpoint $f (--max-steps reached, 0.1 s, loss scale 32768)"
fi
exit 0
EOF
cat >"$FAKE/bundle/bin/make_bench_jpegs" <<'EOF'
#!/bin/bash
mkdir -p "$1/train/c0000" && head -c 1000 /dev/zero >"$1/train/c0000/img_00000000.JPEG" && echo "make_bench_jpegs (fake): $2 JPEGs"
EOF
cat >"$FAKE/bundle/bin/pack_imagenet" <<'EOF'
#!/bin/bash
o=""; while (($#)); do [[ $1 == --output ]] && o=$2; shift; done
mkdir -p "$o" && head -c 1000 /dev/zero >"$o/train-00000-of-00001.h5"
EOF
# gtest stand-ins that write gtest's XML: one clean, one with a failure, one with a skip.
write_fake_gtest() {  # NAME PASSED FAILED SKIPPED
  cat >"$FAKE/bundle/bin/$1" <<EOF
#!/bin/bash
x=""; filt=""
for a in "\$@"; do [[ \$a == --gtest_output=xml:* ]] && x=\${a#--gtest_output=xml:}; [[ \$a == --gtest_filter=* ]] && filt=\${a#--gtest_filter=}; done
if [[ -n \$filt && \$filt != "*" && \$filt != S.* ]]; then  # as gtest: nothing matches, exit 0, an empty XML
  echo '<?xml version="1.0" encoding="UTF-8"?><testsuites tests="0" name="AllTests"></testsuites>' >"\$x"; exit 0
fi
{
echo '<?xml version="1.0" encoding="UTF-8"?><testsuites tests="3" name="AllTests"><testsuite name="S">'
for i in \$(seq 1 $2); do echo "<testcase name=\"ok\$i\" status=\"run\" result=\"completed\" classname=\"S\"/>"; done
for i in \$(seq 1 $3); do echo "<testcase name=\"bad\$i\" status=\"run\" result=\"completed\" classname=\"S\"><failure message=\"x\"/></testcase>"; done
for i in \$(seq 1 $4); do echo "<testcase name=\"skip\$i\" status=\"run\" result=\"skipped\" classname=\"S\"><skipped message=\"no GPU\"/></testcase>"; done
echo '<testcase name="off" status="notrun" result="suppressed" classname="S"/></testsuite></testsuites>'
} >"\$x"
exit \$(( $3 > 0 ? 1 : 0 ))
EOF
}
write_fake_gtest test_fake_ok 5 0 0
# A skip that is not about a missing GPU (a test of the non-CUDA build's message, as in test_comm_nccl): by design.
cat >"$FAKE/bundle/bin/test_fake_bydesign" <<'EOF'
#!/bin/bash
x=""; for a in "$@"; do [[ $a == --gtest_output=xml:* ]] && x=${a#--gtest_output=xml:}; done
cat >"$x" <<'XML'
<?xml version="1.0" encoding="UTF-8"?><testsuites tests="3" name="AllTests"><testsuite name="C">
<testcase name="ok1" status="run" result="completed" classname="C"/><testcase name="ok2" status="run" result="completed" classname="C"/>
<testcase name="NonCudaBuild" status="run" result="skipped" classname="C"><skipped message="t.cpp:3&#x0A;CUDA build"/></testcase>
</testsuite></testsuites>
XML
EOF
echo "commit: 0123456789abcdef (fake)" >"$FAKE/bundle/MANIFEST"
echo "cudnn_built_against: 9.19.0" >>"$FAKE/bundle/MANIFEST"
echo "nvcc: /usr/local/cuda/bin/nvcc 13.0" >>"$FAKE/bundle/MANIFEST"
chmod +x "$FAKE"/bin/* "$FAKE"/bundle/bin/*
FPATH="$FAKE/bin:$PATH"
# A copy with only the clean stand-ins, for checks further down (this one collects failing ones on the way).
CB="$TMP/clean-bundle"
mkdir -p "$CB/bin" "$CB/lib"
for b in test_fake_ok bench_cuda_train train_resnet18 make_bench_jpegs pack_imagenet; do cp "$FAKE/bundle/bin/$b" "$CB/bin/"; done
cp "$FAKE/bundle/MANIFEST" "$CB/"

if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch, torchvision' 2>/dev/null; then
  out=$(FAKE_REAL_TORCH=1 PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --bundle "$FAKE/bundle" --out "$TMP/gc-ok" --python fakepy 2>&1); rc=$?
  S="$TMP/gc-ok/summary.json"
  check "fake host, all clean: exit 0" test "$rc" -eq 0
  check "fake host: PASSED is the last line" test "$(tail -1 <<<"$out")" = "gpu_check: PASSED"
  check "fake host: 5 + 2 passed + the bench selftest + the synthetic trainer run, its resume and the deterministic pair counted" \
    test "$(jget "$S" 'd["tests_total"]["passed"]')" = 11
  check "fake host: two --deterministic runs with the same losses pass, the losses counted" \
    grep -q "^train_resnet18 --deterministic (2 runs) .* ok - 6 logged losses the same" <<<"$out"
  check "fake host: the resume run continued the saved loss scale from the synthetic run's step 200" \
    bash -c 'grep -q "^train_resnet18 --resume (synthetic) .* ok" <<<"$1" &&
             grep -q "rc 0 .*loss scale saved 32768, resumed 32768" <<<"$1"' _ "$out"
  check "fake host: a skip that is not about the GPU is by design, not a failure" \
    grep -q "^test_fake_bydesign .* ok - 1 skipped by design: C.NonCudaBuild" <<<"$out"
  check "fake host: ours fp16 img/s parsed" test "$(jget "$S" 'd["bench"]["ours_fp16"]["img_per_s"]')" = 12800.0
  check "fake host: torch eager ran (RESULT parsed)" test "$(jget "$S" 'd["bench"]["torch_eager_bf16"]["img_per_s"] > 0')" = True
  check "fake host: ratio ours/torch eager computed" \
    test "$(jget "$S" 'abs(d["bench"]["ours_bf16"]["x_torch_eager"] - 12800.0 / d["bench"]["torch_eager_bf16"]["img_per_s"]) < 1e-6')" = True
  # A long note goes on under the note column: the row joined with its continuation lines.
  joined=$(sed -e ':a' -e 'N' -e '$!ba' -e 's/\n \{40,\}/ /g' <<<"$out")
  check "fake host: our rows note the enqueue time, the deterministic and autotuned variants and the CUDA-graph figure" \
    grep -q '^ours fp16 .*enqueue 1.25 ms/step; deterministic 12800 img/s = 1.00x; autotuned 12800 img/s = 1.00x; CUDA graph 13440 img/s = 1.05x' <<<"$joined"
  check "fake host: the variants ran with their flags" \
    bash -c 'grep -q -- "--deterministic" "$1/logs/ours_bf16_det.log" && grep -q -- "--autotune" "$1/logs/ours_bf16_tuned.log"' _ "$TMP/gc-ok"
  check "fake host: no table line is longer than 140 characters" \
    bash -c '! sed -n "/^=====/,\$p" <<<"$1" | grep -q ".\{141,\}"' _ "$out"
  check "fake host: failed compile is a note, not a failure" grep -q 'torch compile fp16 .*skipped' <<<"$out"
  check "fake host: GPU utilisation sampled (97%)" test "$(jget "$S" 'round(d["bench"]["ours_fp16"]["util"]["mean_pct"])')" = 97
  check "fake host: test XML kept" test -f "$TMP/gc-ok/logs/test_fake_ok.xml"
  check "fake host: table has all six benchmark rows" \
    test "$(grep -cE '^(ours|torch eager|torch compile) (fp16|bf16) ' <<<"$out")" -eq 6
  check "fake host: HDF5 trainer img/s from the steady JSONL windows (the slow first one left out)" \
    test "$(jget "$S" 'd["bench"]["train_hdf5_fp16"]["img_per_s"]')" = 7000.0
  check "fake host: HDF5 / synthetic trainer ratio" \
    test "$(jget "$S" 'round(d["e2e"]["hdf5_over_trainer_synthetic"], 4)')" = "$(jget "$S" 'round(7000 / 11000, 4)')"
  check "fake host: trainer utilisation (its NVML polls) and peak memory" \
    test "$(jget "$S" '(d["bench"]["train_synth_fp16"]["util_pct"], round(d["bench"]["train_synth_fp16"]["peak_mb"]))')" = "(95.0, 10000)"
  check "fake host: table has both end-to-end rows and the data line" \
    bash -c 'grep -q "^trainer fp16 synthetic .*x ours fp16" <<<"$1" && grep -q "^trainer fp16 HDF5 .*0.64 x synthetic" <<<"$1" && grep -q "^HDF5 data: 8192 JPEGs" <<<"$1"' _ "$out"
  check "fake host: the PyTorch peer ran with the host's library path, not the bundle's" \
    bash -c '[[ -s $1 ]] && ! grep -q "$2" "$1"' _ "$FAKE/peer_ld_library_path.txt" "$FAKE/bundle/lib"
  e2e_dir=$(sed -n 's/.*make_bench_jpegs: [0-9]* images into \(.*\)$/\1/p' <<<"$out")
  check "fake host: end-to-end data (${e2e_dir:-?}) removed at exit" bash -c '[[ -n $1 && ! -e $1 ]]' _ "$e2e_dir"

  # a failing test and a skipped GPU test both fail the check; --allow-skip accepts the skip only
  write_fake_gtest test_fake_skip 2 0 1
  chmod +x "$FAKE/bundle/bin/test_fake_skip"
  out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --bundle "$FAKE/bundle" --out "$TMP/gc-skip" --python fakepy 2>&1); rc=$?
  check "fake host, a skipped GPU test: exit 1" test "$rc" -eq 1
  check "fake host: the skip is reported as a failure" grep -q 'SKIPPED on a GPU host' <<<"$out"
  check "fake host: --quick leaves torch.compile out" grep -q 'torch compile bf16 .*skipped (--quick)' <<<"$out"
  PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --allow-skip --bundle "$FAKE/bundle" --out "$TMP/gc-skip2" --python fakepy >/dev/null 2>&1; rc=$?
  check "fake host, --allow-skip: exit 0" test "$rc" -eq 0
  write_fake_gtest test_fake_fail 3 2 0
  chmod +x "$FAKE/bundle/bin/test_fake_fail"
  # a binary that dies without writing its XML: what its log shows finished is still counted
  cat >"$FAKE/bundle/bin/test_fake_crash" <<'EOF'
#!/bin/bash
printf '%s\n' '[ RUN      ] S.a' '[       OK ] S.a (1 ms)' '[ RUN      ] P/S.b/f16' '[  FAILED  ] P/S.b/f16, where GetParam() = f16 (2 ms)' \
  '[ RUN      ] S.c' '[       OK ] S.c (3 ms)' '[ RUN      ] S.d'
exit 139
EOF
  chmod +x "$FAKE/bundle/bin/test_fake_crash"
  # ... and a resume that does not continue the saved loss scale
  # ... and two --deterministic runs that log different losses
  out=$(FAKE_RESUME_SCALE=65536 FAKE_DET_DIFFER=1 PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --allow-skip \
    --bundle "$FAKE/bundle" --out "$TMP/gc-fail" --python fakepy 2>&1); rc=$?
  check "fake host, a failing test: exit 1" test "$rc" -eq 1
  check "fake host: 2 failures + 1 from the crashed binary's log + the resume + the deterministic pair counted" \
    test "$(jget "$TMP/gc-fail/summary.json" 'd["tests_total"]["failed"]')" = 5
  check "fake host: --deterministic runs that differ fail, naming the first differing step" \
    grep -q "^train_resnet18 --deterministic (2 runs) .*FAIL - losses differ, first at step 10: loss 6.9 vs 6.8" <<<"$out"
  check "fake host: a resume with another loss scale fails, naming both" \
    grep -q "^train_resnet18 --resume (synthetic) .*FAIL - loss scale 32768 saved, 65536 resumed" <<<"$out"
  check "fake host: crashed binary without XML: counts from its log, failed test named" \
    bash -c 'grep -q "^test_fake_crash .* 2 .* 1 .* 0 .*FAIL - exit 139 .* in S.d" <<<"$1" && grep -q "FAILED:P/S.b/f16" <<<"$1"' _ "$out"
  rm -f "$FAKE/bundle/bin/test_fake_crash"
  # $OUT set: logs are packed into one archive (the device tool returns few files, 16 MiB each at most);
  # a 6 MB test log keeps its first and last MiB
  printf '#!/bin/bash\nhead -c 6000000 /dev/zero | tr "\\\\0" x\nexec "%s" "$@"\n' "$FAKE/bundle/bin/test_fake_ok" >"$FAKE/bundle/bin/test_fake_big"
  chmod +x "$FAKE/bundle/bin/test_fake_big"
  mkdir -p "$TMP/outdir"
  PATH="$FPATH" OUT="$TMP/outdir" "$ROOT/tools/gpu_check.sh" --quick --allow-skip --bundle "$FAKE/bundle" --python fakepy >/dev/null 2>&1
  rm -f "$FAKE/bundle/bin/test_fake_big"
  check "OUT set: summary.json, gpu_check.log and logs.tar.gz only" \
    test "$(cd "$TMP/outdir" && ls | tr '\n' ' ')" = "gpu_check.log logs.tar.gz summary.json "
  check "OUT set: a 6 MB log cut to its first and last MiB in logs.tar.gz" \
    bash -c 'tar -xzf "$1/logs.tar.gz" -C "$1" logs/test_fake_big.log && s=$(wc -c <"$1/logs/test_fake_big.log") &&
             ((s > 2097152 && s < 2200000)) && grep -q "gpu_check: .* bytes cut here" "$1/logs/test_fake_big.log"' _ "$TMP/outdir"
else
  printf 'NOTE /usr/bin/python3 with torch + torchvision missing: fake-host run of gpu_check.sh skipped\n'
fi

# torch without torchvision: named as missing (torch's own facts still logged); the op tests run first,
# then the NCCL test, then the model tests
cp "$FAKE/bundle/bin/test_fake_ok" "$FAKE/bundle/bin/test_cuda_ops"
cp "$FAKE/bundle/bin/test_fake_ok" "$FAKE/bundle/bin/test_comm_nccl"  # first by name
cp "$FAKE/bundle/bin/test_fake_ok" "$FAKE/bundle/bin/test_cuda_model"
out=$(FAKE_NO_TORCHVISION=1 PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --keep-going --no-e2e --bundle "$FAKE/bundle" \
  --out "$TMP/gc-notv" --python fakepy 2>&1); rc=$?
rm -f "$FAKE/bundle/bin/test_cuda_ops" "$FAKE/bundle/bin/test_comm_nccl" "$FAKE/bundle/bin/test_cuda_model"
check "torch without torchvision: exit 1, named, torch's cuDNN still logged" \
  bash -c '[[ $1 -eq 1 ]] && grep -q "torchvision in .fakepy. (the PyTorch peer.s resnet18): ModuleNotFoundError" <<<"$2" &&
           grep -q "\"torch_cudnn\": 91900" <<<"$2"' _ "$rc" "$out"
check "the op tests run first, then test_comm_nccl (first by name), then test_cuda_model" \
  test "$(sed -n '2p;3p;4p' "$TMP/gc-notv/logs/tests.tsv" | cut -f1 | paste -sd ' ')" = "test_cuda_ops test_comm_nccl test_cuda_model"

# a driver older than the bundle's CUDA: stopped at once, even with --keep-going, naming both versions
out=$(FAKE_CUDA_VER=12.8 PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --keep-going --bundle "$FAKE/bundle" \
  --out "$TMP/gc-olddrv" --python fakepy 2>&1); rc=$?
check "driver for CUDA 12.8, bundle built with 13.0: exit 2 before any test, both versions named" \
  bash -c '[[ $1 -eq 2 && $(tail -1 <<<"$2") == *"STOPPED: the driver (580.159.04) supports CUDA up to 12.8, the bundle was built with CUDA 13.0"* ]] &&
           ! grep -q "^test_fake_ok .* ok" <<<"$2" || { tail -3 <<<"$2"; false; }' _ "$rc" "$out"

# a packed bundle (bundle_deps --pack) is unpacked by gpu_check.sh
mkdir -p "$TMP/packed"
(cd "$FAKE/bundle" && tar -cJf "$TMP/packed/bundle.tar.xz" .)
cp "$FAKE/bundle/MANIFEST" "$TMP/packed/"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --allow-skip --bundle "$TMP/packed" --out "$TMP/gc-packed" --python fakepy 2>&1); rc=$?
check "packed bundle: unpacked and run" bash -c '[[ $1 -le 1 ]] && grep -q "unpacked .*bundle.tar.xz" <<<"$2" && grep -q "^test_fake_ok .* ok" <<<"$2"' _ "$rc" "$out"
check "packed bundle: unpacked copy removed at exit" bash -c '! ls -d "${TMPDIR:-/tmp}"/ddp_bundle.* 2>/dev/null | grep -q "$1"' _ \
  "$(sed -n 's/.*unpacked .* into \(.*\)$/\1/p' <<<"$out")"

# no train_resnet18 in the bundle: the end-to-end rows say so and the check fails, everything else still runs
mv "$FAKE/bundle/bin/train_resnet18" "$TMP/train_resnet18.away"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --allow-skip --bundle "$FAKE/bundle" --out "$TMP/gc-notrain" --python fakepy 2>&1); rc=$?
check "no train_resnet18: exit 1, end-to-end rows say why, benchmarks still ran" \
  bash -c '[[ $1 -eq 1 ]] && grep -q "^trainer fp16 HDF5 .*not run: train_resnet18 not in the bundle" <<<"$2" && grep -q "^ours fp16 .*12800" <<<"$2"' _ "$rc" "$out"
mv "$TMP/train_resnet18.away" "$FAKE/bundle/bin/train_resnet18"

# missing pieces: named, exit 2 without --keep-going; run what is there with it
rm -f "$FAKE/bundle/bin/bench_cuda_train"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --bundle "$FAKE/bundle" --out "$TMP/gc-miss" --python fakepy 2>&1); rc=$?
check "missing bench_cuda_train: exit 2, named" bash -c '[[ $1 -eq 2 ]] && grep -q "MISSING: .*bench_cuda_train" <<<"$2"' _ "$rc" "$out"
check "missing bench_cuda_train: listed once among the problems" \
  test "$(grep -c '^  - .*bench_cuda_train (our benchmark)' <<<"$out")" -eq 1
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --bundle "$TMP/no-bundle" --out "$TMP/gc-nob" --python fakepy 2>&1); rc=$?
check "missing bundle: exit 2, names tools/bundle_deps" bash -c '[[ $1 -eq 2 ]] && grep -q "MISSING: bundle .*tools/bundle_deps" <<<"$2"' _ "$rc" "$out"

# Numbers with leading zeros are taken as decimal everywhere (not octal: "090" broke the arithmetic, and
# "010" steps were run as 8 and then not found in the resume's log).
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --bundle "$CB" --out "$TMP/gc-zeros" --python fakepy \
  --budget 0230 --e2e-steps 010 --e2e-images 0512 2>&1); rc=$?
check "--budget 0230 --e2e-steps 010 --e2e-images 0512: exit 0, budget 230, 10 steps resumed to 30" \
  bash -c '[[ $1 -eq 0 && $2 == *"budget 230 s"* && $2 != *"value too great"* && $2 != *"syntax error"* &&
             $2 == *"to step 30 from "*"ckpt-0000000010.h5"* && $2 == *"make_bench_jpegs: 512 images"* ]] || { printf "rc %s: %s\n" "$1" "${2: -1500}"; false; }' _ \
  "$rc" "$out"
# A test binary that ran no test (real gtest exits 0 when nothing runs) tested nothing: a failure.
cat >"$CB/bin/test_fake_empty" <<'EOF'
#!/bin/bash
x=""; for a in "$@"; do [[ $a == --gtest_output=xml:* ]] && x=${a#--gtest_output=xml:}; done
echo '<?xml version="1.0" encoding="UTF-8"?><testsuites tests="0" failures="0" disabled="0" errors="0" name="AllTests"></testsuites>' >"$x"
echo '[==========] 0 tests from 0 test suites ran. (0 ms total)'
EOF
chmod +x "$CB/bin/test_fake_empty"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-empty" --python fakepy 2>&1); rc=$?
check "a test binary that ran no test: exit 1, its row FAIL - ran no tests" \
  bash -c '[[ $1 -eq 1 ]] && grep -q "^test_fake_empty .*FAIL - ran no tests" <<<"$2" && grep -q "^  - test binary test_fake_empty" <<<"$2" ||
           { printf "rc %s: %s\n" "$1" "${2: -1500}"; false; }' _ "$rc" "$out"
# --gtest-filter: a binary it leaves nothing to run is noted, not failed; a filter matching nothing anywhere fails.
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-filt" --python fakepy \
  --gtest-filter 'S.*' 2>&1); rc=$?
check "--gtest-filter matching one binary's tests: exit 0, the other binary 'filtered out'" \
  bash -c '[[ $1 -eq 0 ]] && grep -q "^test_fake_empty .* ok - filtered out" <<<"$2" && grep -q "^test_fake_ok  *5 " <<<"$2" ||
           { printf "rc %s: %s\n" "$1" "${2: -1500}"; false; }' _ "$rc" "$out"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-filt0" --python fakepy \
  --gtest-filter 'Nope.*' 2>&1); rc=$?
check "--gtest-filter matching no test in any binary: exit 1, said" \
  bash -c '[[ $1 -eq 1 && $2 == *"--gtest-filter '"'"'Nope.*'"'"' matched no test in any of the 2 test binaries run"* ]] ||
           { printf "rc %s: %s\n" "$1" "${2: -1500}"; false; }' _ "$rc" "$out"
rm -f "$CB/bin/test_fake_empty"
# The bundle's sources against this checkout's, by the tree of the files (MANIFEST source_tree): the
# same tree is quiet even when the commit differs (a copied checkout with a stale .git); another tree
# is warned about. Only on a clean checkout, whose files' tree is HEAD's.
if [[ -z $(git -C "$ROOT" status --porcelain --untracked-files=normal 2>/dev/null) ]]; then
  echo "source_tree: $(git -C "$ROOT" rev-parse 'HEAD^{tree}')" >>"$CB/MANIFEST"
  out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-tree" --python fakepy 2>&1)
  check "the bundle's source tree is this checkout's: no warning, though its commit is another" \
    bash -c '! grep -q "WARNING: .*\(differ\|built from commit\)" <<<"$1"' _ "$out"
  cp "$FAKE/bundle/MANIFEST" "$CB/"
  echo "source_tree: 0000000000000000000000000000000000000000" >>"$CB/MANIFEST"
  out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-tree" --python fakepy 2>&1)
  check "another source tree: a warning naming the bundle's commit" \
    grep -q "WARNING: this checkout's files differ from those the bundle was built from (commit 0123456789abcdef (fake))" <<<"$out"
  cp "$FAKE/bundle/MANIFEST" "$CB/"
else
  printf 'NOTE uncommitted changes here: the source-tree comparison is not checked\n'
fi
# A bundle made with --allow-stale: warned about.
echo "build_stale: test_cuda_ops (would run: Building CXX object x.o) (bundled with --allow-stale)" >>"$CB/MANIFEST"
out=$(PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-stale" --python fakepy 2>&1)
check "a bundle made with --allow-stale: a warning naming the stale binary" \
  grep -q "WARNING: the bundle was made with --allow-stale .*test_cuda_ops" <<<"$out"
cp "$FAKE/bundle/MANIFEST" "$CB/"
# A run that stops at once (no GPU) keeps the previous GPU run's results (prev/); a second such stop too.
PATH="$FPATH" OUT="" "$ROOT/tools/gpu_check.sh" --quick --no-e2e --bundle "$CB" --out "$TMP/gc-prev" --python fakepy >/dev/null 2>&1
cp "$TMP/gc-prev/summary.json" "$TMP/gc-prev-first.json"
for i in 1 2; do
  out=$(PATH="$NOGPU_PATH" OUT="" "$ROOT/tools/gpu_check.sh" --out "$TMP/gc-prev" 2>&1); rc=$?
  check "no GPU after a GPU run into the same --out (stop $i): exit 2, the GPU run's results kept in prev/" \
    bash -c '[[ $1 -eq 2 && -d $2/prev/logs ]] && cmp -s "$2/prev/summary.json" "$3" && grep -q "no NVIDIA GPU" "$2/summary.json" ||
             { ls -R "$2" | head; false; }' _ "$rc" "$TMP/gc-prev" "$TMP/gc-prev-first.json"
done
# bad arguments found up front: --e2e-images below --batch, the archive instead of its folder
out=$("$ROOT/tools/gpu_check.sh" --batch 256 --e2e-images 100 2>&1); rc=$?
check "--e2e-images 100 with --batch 256: exit 2, one line naming both" \
  bash -c '[[ $1 -eq 2 && $(wc -l <<<"$2") -eq 1 && $2 == *"--e2e-images 100 is below --batch 256"* ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out"
out=$("$ROOT/tools/gpu_check.sh" --bundle "$TMP/packed/bundle.tar.xz" 2>&1); rc=$?
check "--bundle DIR/bundle.tar.xz: exit 2, says to pass its folder" \
  bash -c '[[ $1 -eq 2 && $(wc -l <<<"$2") -eq 1 && $2 == *"not the archive: --bundle $3"* ]] || { printf "%s\n" "$2"; false; }' _ "$rc" "$out" "$TMP/packed"

# ---- the PyTorch peer on the CPU (smoke: arguments, RESULT line) ---------------------------------
if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch, torchvision' 2>/dev/null; then
  last=$(/usr/bin/python3 "$ROOT/tools/bench/torch_gpu_train.py" --device cpu --amp bf16 --batch 2 --size 32 --classes 10 \
         --warmup 1 --iters 2 --windows 2 2>/dev/null | tail -1)
  check "torch_gpu_train.py: RESULT json last, with img_per_s and ms_per_step" \
    "$PY" -c 'import json,sys; s=sys.argv[1]; assert s.startswith("RESULT "); d=json.loads(s[7:]); assert d["img_per_s"]>0 and d["ms_per_step"]>0 and d["batch"]==2' "$last"
  /usr/bin/python3 "$ROOT/tools/bench/torch_gpu_train.py" --size 16 >/dev/null 2>&1; rc=$?
  check "torch_gpu_train.py: --size 16 refused" test "$rc" -eq 2
fi

((BUNDLE_OK)) || true
if ((FAILS)); then printf '%d check(s) FAILED\n' "$FAILS"; exit 1; fi
echo "all checks passed"
