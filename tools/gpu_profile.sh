#!/usr/bin/env bash
# Where one training step's GPU time goes, ours against PyTorch's, kernel by kernel: Nsight Compute
# (ncu) times every kernel of one step after the warm-up (bench_cuda_train --profile-step and
# tools/bench/torch_gpu_train.py --profile-step mark it with cudaProfilerStart/Stop), with the clocks
# as the card has them (--clock-control none: the device README says to leave clocks alone). ncu runs
# the kernels one at a time, so the sum is the step without overlap: a guide to which kernels to work
# on, not a throughput figure (gpu_check.sh gives those). The convs_* runs are not ncu: bench_cuda_conv
# times every conv of the step with the heuristics' engine and with a timed search's (and the stem at
# 4, 8 and 16 padded channels). For a GPU host, after gpu_check.sh passed.
#
# Usage: tools/gpu_profile.sh [--bundle DIR] [--out DIR] [--budget S] [--runs LIST]
#   --bundle DIR   bundle folder from tools/bundle_deps (default .bundle)
#   --out DIR      where the ncu CSVs, logs and profile.txt go (default $OUT, else ./gpu_profile_out)
#   --budget S     stop starting runs after S seconds (default 300)
#   --runs LIST    comma-separated, in order (default ours_bf16,torch_compile_bf16,convs_bf16,torch_eager_bf16,
#                  convs_fp16): ours_fp16 ours_bf16 torch_eager_fp16 torch_eager_bf16 torch_compile_fp16
#                  torch_compile_bf16 convs_fp16 convs_bf16
# Batch 256, 224 px, as gpu_check's benchmark. Prints a table per run LAST (top kernels by time).
# Exit status: 0 every run profiled, 1 a run failed, 2 a bad argument or no ncu / bundle.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE="$ROOT/.bundle"
OUTDIR=${OUT:-./gpu_profile_out}
BUDGET=300
RUNS="ours_bf16,torch_compile_bf16,convs_bf16,torch_eager_bf16,convs_fp16"
bad_arg() { printf 'gpu_profile: %s\n' "$*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --bundle) [[ $# -ge 2 ]] || bad_arg "--bundle needs a value"; BUNDLE=$2; shift 2 ;;
    --out) [[ $# -ge 2 ]] || bad_arg "--out needs a value"; OUTDIR=$2; shift 2 ;;
    --budget) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || bad_arg "--budget needs whole seconds"; BUDGET=$2; shift 2 ;;
    --runs) [[ $# -ge 2 ]] || bad_arg "--runs needs a value"; RUNS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) bad_arg "unknown argument '$1'" ;;
  esac
done
for r in ${RUNS//,/ }; do
  [[ $r =~ ^((ours|convs)_(fp16|bf16)|torch_(eager|compile)_(fp16|bf16))$ ]] || bad_arg "--runs: '$r' is not a run this script knows"
done
NCU=$(command -v ncu)
if [[ -z $NCU ]]; then
  for c in /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu; do [[ -x $c ]] && { NCU=$c; break; }; done
fi
[[ -n $NCU && -x $NCU ]] || bad_arg "no ncu (Nsight Compute) on PATH or under /opt/nvidia/nsight-compute"
[[ -f $BUNDLE/bundle.tar.xz ]] || bad_arg "no $BUNDLE/bundle.tar.xz (tools/bundle_deps)"
mkdir -p "$OUTDIR" || bad_arg "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu_profile.log"
: >"$LOG"
log() { printf '[gpu_profile %3ds] %s\n' "$SECONDS" "$*" | tee -a "$LOG"; }

# Python keeps the host's library path (as in gpu_check.sh); our binaries get the bundle's (env.sh).
if [[ -n ${LD_LIBRARY_PATH+set} ]]; then HOSTENV=(env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"); else HOSTENV=(env -u LD_LIBRARY_PATH); fi
UNPACKED=$(mktemp -d "${TMPDIR:-/tmp}/ddp_profile.XXXXXX")
trap 'rm -rf "$UNPACKED"' EXIT
tar -xJf "$BUNDLE/bundle.tar.xz" -C "$UNPACKED" || bad_arg "cannot unpack $BUNDLE/bundle.tar.xz"
# shellcheck source=/dev/null
DDP_PYTHON=python3 source "$UNPACKED/env.sh"
log "ncu: $NCU ($("$NCU" --version 2>/dev/null | tail -1)); bundle $(sed -n 's/^commit: //p' "$UNPACKED/MANIFEST")"

read -ra RUN_LIST <<<"${RUNS//,/ }"
bad=0
for r in "${RUN_LIST[@]}"; do
  left=$((BUDGET - SECONDS))
  if ((left < 40)); then log "$r: not run (budget spent)"; continue; fi
  amp=${r##*_}
  if [[ $r == convs_* ]]; then
    log "$r: bench_cuda_conv (limit $left s)"
    timeout -k 10 "$left" "$UNPACKED/bin/bench_cuda_conv" --amp "$amp" --batch 256 --size 224 --stem-cpad 4,8,16 \
      >"$OUTDIR/$r.txt" 2>&1
    rc=$?
    log "$r: rc $rc; $(grep '^all convs' "$OUTDIR/$r.txt" || tail -1 "$OUTDIR/$r.txt")"
    ((rc == 0)) || bad=$((bad + 1))
    continue
  fi
  case $r in
    ours_*) cmd=("$UNPACKED/bin/bench_cuda_train" --amp "$amp" --batch 256 --size 224 --warmup 10 --profile-step) ;;
    torch_eager_*) cmd=(python3 "$ROOT/tools/bench/torch_gpu_train.py" --amp "$amp" --warmup 10 --profile-step) ;;
    torch_compile_*) cmd=(python3 "$ROOT/tools/bench/torch_gpu_train.py" --compile --amp "$amp" --warmup 10 --profile-step) ;;
  esac
  # PyTorch gets the host's library path through env, which must come before ncu: ncu profiles the
  # program it starts, not that program's children (seen on the H200: "No kernels were profiled").
  pre=()
  [[ $r == torch_* ]] && pre=("${HOSTENV[@]}")
  log "$r: ncu on one step (limit $left s)"
  timeout -k 10 "$left" "${pre[@]}" "$NCU" --profile-from-start off --clock-control none --target-processes application-only \
    --metrics gpu__time_duration.sum \
    --csv --print-units base --log-file "$OUTDIR/$r.csv" "${cmd[@]}" >"$OUTDIR/$r.log" 2>&1
  rc=$?
  log "$r: rc $rc ($(grep -c '"gpu__time_duration.sum"' "$OUTDIR/$r.csv" 2>/dev/null || echo 0) kernels)"
  ((rc == 0)) || { bad=$((bad + 1)); tail -3 "$OUTDIR/$r.log" | tee -a "$LOG"; }
done

"${HOSTENV[@]}" python3 - "$OUTDIR" "${RUN_LIST[@]}" <<'PYEOF' | tee "$OUTDIR/profile.txt"
import csv, os, re, sys
out, runs = sys.argv[1], sys.argv[2:]
def short(name):
    # "void ddp::<unnamed>::k_bn_apply_vec<__nv_bfloat16>(const T1 *, ...)" -> "k_bn_apply_vec"
    name = name.replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"[(<].*", "", name)         # template and argument lists
    return name.split("::")[-1][:90]
for r in runs:
    if r.startswith("convs_"):
        try:
            with open(os.path.join(out, r + ".txt")) as f:
                rows = [l.rstrip() for l in f if re.search(r" (fprop|dgrad|wgrad) ", l)]
        except OSError:
            continue
        # The convs where the heuristics' engine is slowest against the searched one, by time lost.
        def lost(l):
            p = l.split()
            try:
                return float(p[-3]) - float(p[-2])
            except ValueError:
                return 0.0
        print(f"== {r}: heuristics against a timed search, the 12 largest losses (ms)")
        for l in sorted(rows, key=lost, reverse=True)[:12]:
            print("  " + l)
        continue
    path = os.path.join(out, r + ".csv")
    if not os.path.exists(path):
        continue
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    rows = [x for x in csv.DictReader(lines) if x.get("Metric Name") == "gpu__time_duration.sum"]
    if not rows:
        print(f"== {r}: no kernels profiled")
        continue
    by = {}
    for x in rows:
        try:
            ns = float(x["Metric Value"].replace(",", ""))
        except ValueError:
            continue
        k = short(x["Kernel Name"])
        t, n = by.get(k, (0.0, 0))
        by[k] = (t + ns, n + 1)
    total = sum(t for t, _ in by.values())
    print(f"== {r}: {len(rows)} kernels, {total / 1e6:.2f} ms summed (one at a time, clocks as found)")
    for k, (t, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:18]:
        print(f"  {t / 1e6:7.3f} ms {100 * t / total:5.1f}%  x{n:<4} {k}")
PYEOF
exit $((bad ? 1 : 0))
