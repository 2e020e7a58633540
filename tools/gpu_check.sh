#!/usr/bin/env bash
# The one prepared check for a GPU host (air-gapped is fine): checks the GPU and driver, runs the GPU
# tests of a bundle made by tools/bundle_deps, benchmarks our ResNet18 training step against PyTorch on
# the same GPU in the same run, runs train_resnet18 end to end (synthetic data, then HDF5 shards packed
# there from generated JPEGs), and prints a short table LAST. Full logs and summary.json go to DIR.
#
# Usage: tools/gpu_check.sh [--bundle DIR] [--out DIR] [--quick] [options]
#   --bundle DIR        bundle folder from tools/bundle_deps (default: .bundle in the repository root); the
#                       folder, not its bundle.tar.xz
#   --out DIR           where logs, test XML and summary.json go (default: $OUT if set, else ./gpu_check_out);
#                       a previous gpu_check's logs/, gpu_check.log, summary.json, logs.tar.gz there are
#                       replaced (first moved to DIR/prev/ when that run found a GPU, so that a run that
#                       stops at once keeps them), files of those names it did not write are refused (exit 2),
#                       as is a DIR it cannot write
#   --quick             tests + short benchmarks and end-to-end runs, no torch.compile (about 4 minutes)
#   --keep-going        run whatever is there even if something is missing (still exits non-zero)
#   --allow-skip        a skipped GPU test is not a failure (default: it is; on a GPU host nothing should skip)
#   --python PY         python3 with PyTorch + torchvision (default: $DDP_PYTHON or python3)
#   --batch N --size N  benchmark batch and image size (default 256, 224; batch 1-8192, size 32-1024)
#   --ours-args "ARGS"  extra arguments for bench_cuda_train
#   --gtest-filter F    passed to every test binary; one it leaves no test is noted, not failed, but a filter
#                       matching no test in any binary fails (without a filter, a binary running no test fails)
#   --test-timeout S    per test binary (default 150; quick 90)
#   --budget S          whole-run time budget; steps that would overrun it are skipped with a note
#                       (default 465; quick 230)
#   --e2e-images N      JPEGs made and packed for the end-to-end run (default 8192; quick 4096); at least --batch
#   --e2e-steps N       steps of each train_resnet18 run, synthetic and HDF5 (default 200; quick 100)
#   --no-e2e            skip the train_resnet18 runs
# Exit status: 0 all passed; 1 a test failed/skipped/crashed, a benchmark failed or something is missing;
# 2 the host cannot run anything (no GPU/driver, no bundle), a bad argument or an output folder it cannot
# use - the message says what.
# See docs/GPU_HOST.md.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE="$ROOT/.bundle"
OUTDIR=${OUT:-./gpu_check_out}
QUICK=0
KEEP_GOING=0
ALLOW_SKIP=0
PY=${DDP_PYTHON:-python3}
BATCH=256
SIZE=224
OURS_ARGS=""
GTEST_FILTER=""
TEST_TIMEOUT=""
BUDGET=""
E2E=1
E2E_IMAGES=""
E2E_STEPS=""

usage() { sed -n '2,/^[^#]/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
bad_arg() { printf 'gpu_check: %s (see --help)\n' "$*" >&2; exit 2; }
need_val() { [[ $# -ge 2 && -n $2 ]] || bad_arg "$1 needs a value"; }
NUM=0
need_int() {  # need_int FLAG VALUE [MIN [MAX]]: sets NUM to VALUE as a plain decimal ("090" -> 90)
  local min=${3:-1} max=${4:-1000000}
  if ! [[ $2 =~ ^[0-9]{1,9}$ ]] || ((10#$2 < min || 10#$2 > max)); then
    bad_arg "$1 needs a whole number from $min to $max, got '$2'"
  fi
  NUM=$((10#$2))
}

while (($#)); do
  case $1 in
    --bundle) need_val "$@"; BUNDLE=$2; shift 2
      [[ -f $BUNDLE && $BUNDLE == *.tar.xz ]] && bad_arg "--bundle takes the bundle's folder (MANIFEST and bundle.tar.xz), not the archive: --bundle $(dirname -- "$BUNDLE")"
      ;;
    --out) need_val "$@"; OUTDIR=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --keep-going) KEEP_GOING=1; shift ;;
    --allow-skip) ALLOW_SKIP=1; shift ;;
    --python) need_val "$@"; PY=$2; shift 2 ;;
    --batch) need_val "$@"; need_int "$1" "$2" 1 8192; BATCH=$NUM; shift 2 ;;
    --size) need_val "$@"; need_int "$1" "$2" 32 1024; SIZE=$NUM; shift 2 ;;
    --ours-args) need_val "$@"; OURS_ARGS=$2; shift 2 ;;
    --gtest-filter) need_val "$@"; GTEST_FILTER=$2; shift 2 ;;
    --test-timeout) need_val "$@"; need_int "$1" "$2" 1 3600; TEST_TIMEOUT=$NUM; shift 2 ;;
    --budget) need_val "$@"; need_int "$1" "$2" 30 86400; BUDGET=$NUM; shift 2 ;;
    --e2e-images) need_val "$@"; need_int "$1" "$2"; E2E_IMAGES=$NUM; shift 2 ;;
    --e2e-steps) need_val "$@"; need_int "$1" "$2"; E2E_STEPS=$NUM; shift 2 ;;
    --no-e2e) E2E=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) bad_arg "unknown argument '$1'" ;;
  esac
done
# The HDF5 run needs at least one batch of images (a smaller set gives no step at all).
if ((E2E)) && [[ -n $E2E_IMAGES ]] && ((E2E_IMAGES < BATCH)); then
  bad_arg "--e2e-images $E2E_IMAGES is below --batch $BATCH: the end-to-end HDF5 run needs at least one batch of images"
fi
if ((QUICK)); then
  TEST_TIMEOUT=${TEST_TIMEOUT:-90}; BUDGET=${BUDGET:-230}; TESTS_BUDGET=100; BENCH_TIMEOUT=90
  TORCH_STEPS=(--warmup 8 --iters 10 --windows 3)
  E2E_IMAGES=${E2E_IMAGES:-4096}; E2E_STEPS=${E2E_STEPS:-100}
else
  TEST_TIMEOUT=${TEST_TIMEOUT:-150}; BUDGET=${BUDGET:-465}; TESTS_BUDGET=200; BENCH_TIMEOUT=150
  TORCH_STEPS=(--warmup 15 --iters 20 --windows 5)
  E2E_IMAGES=${E2E_IMAGES:-8192}; E2E_STEPS=${E2E_STEPS:-200}
fi
((E2E_IMAGES < BATCH)) && E2E_IMAGES=$BATCH  # a default below a large --batch: one batch of images
COMPILE_TIMEOUT=240   # torch.compile that takes longer than this is reported as skipped
RESERVE=15            # seconds kept back for the summary

# The output folder: writable (checked first: one line, exit 2), and only what a previous gpu_check wrote
# there is replaced. Its marks: logs/steps.tsv with our header, a gpu_check.log of our log lines, a
# summary.json with our keys, a logs.tar.gz holding logs/steps.tsv, a prev/ holding such a gpu_check.log.
# Anything else under those names (a project's own logs/, say, with --out .) stops the run before anything
# is deleted. A previous run that found a GPU (it reached the libraries step) is moved to prev/ first (an
# older prev/ goes): a run that then stops at once (no GPU, no bundle) must not cost the last GPU results.
out_err() { printf 'gpu_check: %s\n' "$*" >&2; exit 2; }
mkdir -p -- "$OUTDIR" 2>/dev/null || out_err "cannot create output directory '$OUTDIR'"
out_abs=$(cd -- "$OUTDIR" 2>/dev/null && pwd) || out_abs=""
[[ -n $out_abs ]] || out_err "cannot enter output directory '$OUTDIR'"
OUTDIR=$out_abs
probe="$OUTDIR/.gpu_check_write_test.$$"
{ : >"$probe"; } 2>/dev/null || out_err "cannot write to output directory '$OUTDIR' (pick another with --out DIR)"
rm -f -- "$probe"
LOGDIR="$OUTDIR/logs"
dir_empty() { local f; for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do [[ -e $f || -L $f ]] && return 1; done; return 0; }
STEPS_HEADER=$'step\tstatus\tseconds\tnote'
if [[ -e $LOGDIR || -L $LOGDIR ]]; then
  if [[ ! -d $LOGDIR || -L $LOGDIR ]]; then
    out_err "'$LOGDIR' exists and is not a folder gpu_check made; refusing to replace it (pick another --out DIR)"
  elif ! dir_empty "$LOGDIR" && [[ $(head -1 "$LOGDIR/steps.tsv" 2>/dev/null) != "$STEPS_HEADER" ]]; then
    out_err "'$LOGDIR' holds files a previous gpu_check did not write; refusing to delete them (pick another --out DIR)"
  fi
fi
if [[ -e $OUTDIR/gpu_check.log && -s $OUTDIR/gpu_check.log ]] && ! [[ $(head -1 "$OUTDIR/gpu_check.log") =~ ^\[gpu_check\ +[0-9]+s\]\  ]]; then
  out_err "'$OUTDIR/gpu_check.log' was not written by gpu_check; refusing to overwrite it (pick another --out DIR)"
fi
if [[ -e $OUTDIR/summary.json ]] && ! grep -q '"tests_total"' "$OUTDIR/summary.json" 2>/dev/null; then
  out_err "'$OUTDIR/summary.json' was not written by gpu_check; refusing to delete it (pick another --out DIR)"
fi
# (grep -q reads from a process substitution, not a pipe: it stops at the first match, the writer may then
# die of SIGPIPE, and under pipefail that would read as "no match".)
if [[ -e $OUTDIR/logs.tar.gz ]] && ! grep -qx 'logs/steps.tsv' < <(tar -tzf "$OUTDIR/logs.tar.gz" 2>/dev/null); then
  out_err "'$OUTDIR/logs.tar.gz' was not written by gpu_check; refusing to delete it (pick another --out DIR)"
fi
PREV="$OUTDIR/prev"
is_our_log() { [[ -f $1 && $(head -1 "$1") =~ ^\[gpu_check\ +[0-9]+s\]\  ]]; }
if [[ -e $PREV || -L $PREV ]] && { [[ ! -d $PREV || -L $PREV ]] || { ! dir_empty "$PREV" && ! is_our_log "$PREV/gpu_check.log"; }; }; then
  out_err "'$PREV' was not written by gpu_check; refusing to replace it (pick another --out DIR)"
fi
PREV_NOTE=""
if is_our_log "$OUTDIR/gpu_check.log" && grep -qE '^\[gpu_check +[0-9]+s\] == libraries$' "$OUTDIR/gpu_check.log"; then
  { rm -rf -- "$PREV" && mkdir -p "$PREV"; } || out_err "cannot make '$PREV' for the previous run's results"
  for e in logs gpu_check.log summary.json logs.tar.gz; do
    if [[ -e $OUTDIR/$e ]]; then mv -- "$OUTDIR/$e" "$PREV/" || out_err "cannot move '$OUTDIR/$e' to '$PREV'"; fi
  done
  PREV_NOTE="the previous run's results (it found a GPU) are in $PREV"
fi
rm -rf -- "$LOGDIR" "$OUTDIR/logs.tar.gz" "$OUTDIR/summary.json"
mkdir -p "$LOGDIR"
MAIN_LOG="$OUTDIR/gpu_check.log"
: >"$MAIN_LOG"
printf '%s\n' "$STEPS_HEADER" >"$LOGDIR/steps.tsv"
printf 'binary\trc\tpassed\tfailed\tskipped\tseconds\tnote\n' >"$LOGDIR/tests.tsv"
: >"$LOGDIR/missing.txt"

log() {
  local m
  m=$(printf '[gpu_check %3ds] %s' "$SECONDS" "$*")
  printf '%s\n' "$m"
  printf '%s\n' "$m" >>"$MAIN_LOG"
}
missing() { log "MISSING: $*"; printf '%s\n' "$*" >>"$LOGDIR/missing.txt"; }

STEP=""
STEP_T0=0
step_begin() { STEP=$1; STEP_T0=$SECONDS; log "== $1"; }
step_end() {  # step_end STATUS [NOTE]
  printf '%s\t%s\t%s\t%s\n' "$STEP" "$1" "$((SECONDS - STEP_T0))" "${2:-}" >>"$LOGDIR/steps.tsv"
  log "-- $STEP: $1 ($((SECONDS - STEP_T0)) s)${2:+ - $2}"
}
# Seconds a step may use: its own limit, cut to what is left of the budget.
cap() {
  local left=$((BUDGET - RESERVE - SECONDS))
  ((left < $1)) && { echo "$left"; return; }
  echo "$1"
}

SAMPLER=""
CHILD_NOTE=""
UNPACKED=""
E2E_DIR=""
# Stops the utilisation sampler. A SIGTERM that reaches it between its fork and its exec (a run that
# ended within milliseconds) is lost, and a plain kill + wait then waited for ever (seen once with the
# fake host): the signal is repeated until it is gone, then SIGKILL.
stop_sampler() {
  [[ -n $SAMPLER ]] || return 0
  local _
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    kill "$SAMPLER" 2>/dev/null || break
    sleep 0.1
    kill -0 "$SAMPLER" 2>/dev/null || break
  done
  kill -KILL "$SAMPLER" 2>/dev/null
  wait "$SAMPLER" 2>/dev/null
  SAMPLER=""
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null
  [[ -n $UNPACKED && -d $UNPACKED ]] && rm -rf "$UNPACKED"
  [[ -n $E2E_DIR && -d $E2E_DIR ]] && rm -rf "$E2E_DIR"
  return 0
}
trap cleanup EXIT

# Python runs with the host's own library path: env.sh (sourced below for our binaries) puts the
# bundle's Debian libraries (libssl, libz, libzstd, libffi, libgomp, ...) first on LD_LIBRARY_PATH, and
# those must not replace the ones the host's Python, PyTorch and Triton were built against.
if [[ -n ${LD_LIBRARY_PATH+set} ]]; then HOSTENV=(env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"); else HOSTENV=(env -u LD_LIBRARY_PATH); fi

# A python that can at least parse XML and JSON for the summary, even if $PY lacks torch.
TOOLPY=""
for p in "$PY" python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import json, xml.etree.ElementTree' >/dev/null 2>&1; then TOOLPY=$p; break; fi
done

# The summary: table to stdout (last), summary.json to OUTDIR. Its exit status is the script's.
summarize() {
  local fatal=${1:-}
  if [[ -z $TOOLPY ]]; then
    log "no python3 to write the summary; raw results:"
    cat "$LOGDIR/tests.tsv" "$LOGDIR/steps.tsv"
    [[ -n $fatal ]] && { log "FAILED: $fatal"; return 2; }
    return 1
  fi
  FATAL="$fatal" QUICK="$QUICK" ALLOW_SKIP="$ALLOW_SKIP" BATCH="$BATCH" SIZE="$SIZE" BUNDLE="$BUNDLE" \
    "${HOSTENV[@]}" "$TOOLPY" - "$LOGDIR" "$OUTDIR/summary.json" <<'PYEOF' | tee -a "$MAIN_LOG"
import csv, glob, json, os, statistics, sys, textwrap
logdir, out = sys.argv[1], sys.argv[2]
env = os.environ
def rd(name, default=None):
    p = os.path.join(logdir, name)
    try:
        with open(p) as f:
            return json.load(f) if name.endswith(".json") else f.read()
    except (OSError, ValueError):
        return default
def tsv(name):
    try:
        with open(os.path.join(logdir, name)) as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except OSError:
        return []

info = rd("host.json", {}) or {}
missing = [l for l in (rd("missing.txt", "") or "").splitlines() if l.strip()]
steps = tsv("steps.tsv")
tests = tsv("tests.tsv")
problems = []
if env.get("FATAL"):
    problems.append(env["FATAL"])
# Each missing thing once: a stop because of them already lists them all (joined), and the host step's
# failure only counts them.
if not env.get("FATAL", "").startswith("missing: "):
    problems += ["missing: " + m for m in missing]
for s in steps:
    # A stop names its own cause (FATAL): the failed step that led to it would say it again.
    if s["status"] == "FAIL" and not env.get("FATAL") and not (missing and s["note"].endswith("thing(s) missing")):
        problems.append(f"step {s['step']} failed: {s['note']}")

tot = {"passed": 0, "failed": 0, "skipped": 0, "binaries": len(tests), "bad_binaries": 0}
for t in tests:
    for k in ("passed", "failed", "skipped"):
        t[k] = int(t[k]) if str(t[k]).lstrip("-").isdigit() else 0
        tot[k] += t[k]
    t["rc"] = int(t["rc"]) if str(t["rc"]).lstrip("-").isdigit() else -1
    t["seconds"] = int(t["seconds"]) if str(t["seconds"]).isdigit() else 0
    # A test binary that ran no test (gtest exits 0 then) tested nothing: a failure, unless --gtest-filter
    # left it nothing to run (noted; the tests step fails when the filter matched nothing anywhere).
    ran_none = t["passed"] + t["failed"] + t["skipped"] == 0 and "skipped by design" not in t["note"]
    ok = (t["rc"] == 0 and t["failed"] == 0 and (t["skipped"] == 0 or env.get("ALLOW_SKIP") == "1")
          and (not ran_none or t["note"].startswith("filtered out")))
    t["ok"] = ok
    if not ok:
        tot["bad_binaries"] += 1
        why = t["note"] or f"rc {t['rc']}"
        problems.append(f"test binary {t['binary']}: {t['failed']} failed, {t['skipped']} skipped, {why}")
if tot["skipped"] and env.get("ALLOW_SKIP") != "1":
    problems.append(f"{tot['skipped']} GPU test(s) SKIPPED on a GPU host (a failure of the check; --allow-skip to accept)")

def util_stats(key):
    vals = []
    try:
        with open(os.path.join(logdir, key + ".util.csv")) as f:
            for line in f:
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 3 and parts[1].isdigit():
                    clk = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
                    vals.append((int(parts[1]), int(parts[2]) if parts[2].isdigit() else None, clk))
    except OSError:
        pass
    if not vals:
        return None
    u = [v[0] for v in vals]
    tail = u[len(u) // 2:]
    mem = [v[1] for v in vals if v[1] is not None]
    clk = [v[2] for v in vals[len(vals) // 2:] if v[2] is not None]
    return {"samples": len(u), "mean_pct": statistics.mean(u), "steady_mean_pct": statistics.mean(tail),
            "max_mem_used_mb": max(mem) if mem else None,
            "steady_mean_sm_clock_mhz": statistics.mean(clk) if clk else None}

def pick(d, *keys):
    for k in keys:
        if isinstance(d, dict) and isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None

rows = [("ours fp16", "ours_fp16"), ("ours bf16", "ours_bf16"),
        ("torch eager fp16", "torch_eager_fp16"), ("torch eager bf16", "torch_eager_bf16"),
        ("torch compile fp16", "torch_compile_fp16"), ("torch compile bf16", "torch_compile_bf16")]
e2e_rows = [("trainer fp16 synthetic", "train_synth_fp16"), ("trainer fp16 HDF5", "train_hdf5_fp16")]
bench = {}
for label, key in rows + e2e_rows:
    st = rd(key + ".status")
    r = rd(key + ".json")
    e = {"label": label, "ran": st is not None}
    if st is not None:
        parts = st.strip().split("\t")
        e["rc"] = int(parts[0]) if parts and parts[0].lstrip("-").isdigit() else None
        e["seconds"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        e["note"] = parts[2] if len(parts) > 2 else ""
    else:
        e["note"] = "not run"
    if isinstance(r, dict):
        e["result"] = r
        ips = pick(r, "img_per_s", "images_per_s", "img_s", "imgs_per_s", "images_per_sec", "throughput")
        ms = pick(r, "ms_per_step", "step_ms", "ms_step")
        batch = pick(r, "batch") or float(env.get("BATCH", "256"))
        if ips is None and ms:
            ips = batch * 1e3 / ms
        if ms is None and ips:
            ms = batch * 1e3 / ips
        peak = pick(r, "peak_mem_mb", "peak_mb", "peak_memory_mb")
        if peak is None:
            pb = pick(r, "peak_mem_bytes", "peak_bytes")
            peak = pb / 2**20 if pb is not None else None
        e.update(img_per_s=ips, ms_per_step=ms, peak_mb=peak)
    e["util"] = util_stats(key)
    # The trainer polls NVML itself at its log steps: its mean over the steady windows is the better figure.
    tu = pick(e.get("result"), "gpu_util_mean")
    e["util_pct"] = tu if tu is not None else (e["util"]["steady_mean_pct"] if e["util"] else None)
    e["smi_peak_mb"] = e["util"]["max_mem_used_mb"] if e["util"] else None
    bench[key] = e
for amp in ("fp16", "bf16"):
    eager = bench[f"torch_eager_{amp}"].get("img_per_s")
    extra = ["train_synth_fp16", "train_hdf5_fp16"] if amp == "fp16" else []
    for key in [f"ours_{amp}", f"torch_eager_{amp}", f"torch_compile_{amp}"] + extra:
        v = bench[key].get("img_per_s")
        bench[key]["x_torch_eager"] = v / eager if (v and eager) else None
    c = bench[f"torch_compile_{amp}"].get("img_per_s")
    o = bench[f"ours_{amp}"].get("img_per_s")
    bench[f"ours_{amp}"]["x_torch_compile"] = o / c if (o and c) else None
for key in ("ours_fp16", "ours_bf16", "torch_eager_fp16", "torch_eager_bf16", "train_synth_fp16", "train_hdf5_fp16"):
    e = bench[key]
    if e["ran"] and e.get("img_per_s") is None and not (e.get("note") or "").startswith("skipped"):
        problems.append(f"benchmark {e['label']} gave no result: {e.get('note') or 'no RESULT line'}")
    if isinstance(e.get("result"), dict) and e["result"].get("loss_finite") is False:
        problems.append(f"benchmark {e['label']}: loss not finite")

e2e = rd("e2e.json", {}) or {}
hd, sy, ob = (bench[k].get("img_per_s") for k in ("train_hdf5_fp16", "train_synth_fp16", "ours_fp16"))
e2e["hdf5_over_trainer_synthetic"] = hd / sy if (hd and sy) else None
e2e["hdf5_over_bench_fp16"] = hd / ob if (hd and ob) else None
e2e["trainer_synthetic_over_bench_fp16"] = sy / ob if (sy and ob) else None

passed = not problems
summary = {"passed": passed, "problems": problems, "quick": env.get("QUICK") == "1", "host": info,
           "bundle": env.get("BUNDLE"), "bundle_manifest": (rd("manifest.txt", "") or "").splitlines()[:12],
           "steps": steps, "tests_total": tot, "tests": tests, "bench": bench, "e2e": e2e,
           "bench_config": {"batch": int(env.get("BATCH", 256)), "size": int(env.get("SIZE", 224))}}
with open(out, "w") as f:
    json.dump(summary, f, indent=1)

if env.get("FATAL"):
    # Nothing ran: the table would be all dashes; say what stopped it, last.
    print("=" * 100)
    print(f"gpu_check: {info.get('gpu_name', 'no GPU')}, bundle commit {info.get('bundle_commit', '?')}")
    print(f"gpu_check: FAILED before running anything ({len(problems)} problem(s)):")
    for p in problems[:15]:
        print("  - " + p)
    sys.exit(2)

def f(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) else "-"
W = 100
print("=" * W)
print(f"gpu_check: {info.get('gpu_name', '?')} ({info.get('gpu_mem_mib', '?')} MiB), driver {info.get('driver', '?')}, "
      f"CUDA {info.get('cuda', '?')}, torch {info.get('torch', '?')}, cuDNN {info.get('torch_cudnn', '?')}")
print(f"bundle commit: {info.get('bundle_commit', '?')}   mode: {'quick' if summary['quick'] else 'full'}   "
      f"total {steps and sum(int(s['seconds']) for s in steps if s['seconds'].isdigit())} s")
print("-" * W)
print(f"{'test binary':<40}{'pass':>7}{'fail':>7}{'skip':>7}{'secs':>7}  status")
for t in tests:
    print(f"{t['binary']:<40}{t['passed']:>7}{t['failed']:>7}{t['skipped']:>7}{t['seconds']:>7}  "
          f"{'ok' if t['ok'] else 'FAIL'}{(' - ' + t['note']) if t['note'] else ''}")
print(f"{'all (' + str(tot['binaries']) + ' binaries)':<40}{tot['passed']:>7}{tot['failed']:>7}{tot['skipped']:>7}{'':>7}  "
      f"{'ok' if tot['binaries'] and not tot['bad_binaries'] else 'FAIL'}")
print("-" * W)
print(f"{'benchmark b' + env.get('BATCH', '') + ' ' + env.get('SIZE', '') + 'px':<23}{'img/s':>8}{'ms/step':>9}{'peak MB':>9}"
      f"{'smi MB':>8}{'util%':>6}{'x eager':>8}  note")
for label, key in rows + e2e_rows:
    if key == e2e_rows[0][1]:
        print(f"end to end: train_resnet18, NCCL 1 rank, fp16 loss scaling, {e2e.get('steps', '?')} steps each")
    e = bench[key]
    got = e.get("img_per_s") is not None  # samples of a run that gave no figure say nothing
    u = e.get("util_pct") if got else None
    smi = e.get("smi_peak_mb") if got else None
    note = e.get("note") or ""
    if e.get("img_per_s") is None and not note:
        note = "no RESULT line"
    r = e.get("result") if isinstance(e.get("result"), dict) else {}
    extra = []
    if r.get("mode") == "compile" and isinstance(r.get("first_step_s"), (int, float)):
        extra.append(f"compile {r['first_step_s']:.0f} s")
    if isinstance(r.get("ms_spread_pct"), (int, float)) and r["ms_spread_pct"] > 3:
        extra.append(f"window spread {r['ms_spread_pct']:.0f}%")
    if isinstance(r.get("fixed_scale_img_per_s"), (int, float)):
        extra.append(f"scale {r.get('loss_scale', 0):.0f}, {r.get('skipped_steps', 0)} skipped; "
                     f"no check {r['fixed_scale_img_per_s']:.0f} img/s")
    if isinstance(r.get("host_ms_per_step"), (int, float)):
        extra.append(f"enqueue {r['host_ms_per_step']:.2f} ms/step")
    for suffix, word in (("_det", "deterministic"), ("_tuned", "autotuned")):
        rv = rd(key + suffix + ".json") if key.startswith("ours_") else None
        if isinstance(rv, dict) and isinstance(rv.get("img_per_s"), (int, float)) and e.get("img_per_s"):
            e[word + "_img_per_s"] = rv["img_per_s"]
            extra.append(f"{word} {rv['img_per_s']:.0f} img/s = {rv['img_per_s'] / e['img_per_s']:.2f}x")
    if isinstance(r.get("graph_over_eager"), (int, float)):
        extra.append(f"CUDA graph {r.get('graph_img_per_s', 0):.0f} img/s = {r['graph_over_eager']:.2f}x")
    elif r.get("graph_error"):
        extra.append("CUDA graph failed: " + str(r["graph_error"])[:70])
    if key == "train_synth_fp16" and e2e.get("trainer_synthetic_over_bench_fp16"):
        extra.append(f"{e2e['trainer_synthetic_over_bench_fp16']:.2f} x ours fp16")
    if key == "train_hdf5_fp16" and e2e.get("hdf5_over_trainer_synthetic"):
        extra.append(f"{e2e['hdf5_over_trainer_synthetic']:.2f} x synthetic")
    note = "; ".join([x for x in [note] + extra if x])
    head = (f"{label:<23}{f(e.get('img_per_s'), '.0f'):>8}{f(e.get('ms_per_step'), '.2f'):>9}{f(e.get('peak_mb'), '.0f'):>9}"
            f"{f(smi, '.0f'):>8}{f(u, '.0f'):>6}{f(e.get('x_torch_eager'), '.2f'):>8}  ")
    # A long note goes on under the note column (a cut one lost the deterministic figure once).
    lines = textwrap.wrap(note, W + 40 - len(head)) or [""]
    print(head + lines[0])
    for more in lines[1:4]:
        print(" " * len(head) + more)
if e2e.get("images"):
    print(f"HDF5 data: {e2e['images']} JPEGs made in {e2e.get('make_jpegs_s', '?')} s ({e2e.get('jpeg_mb', '?')} MB), "
          f"packed in {e2e.get('pack_s', '?')} s to {e2e.get('shard_mb', '?')} MB (shorter side 256)")
print("(x eager: img/s / torch eager img/s at the same precision. peak MB: the program's own count (ours: tracked);\n"
      " smi MB: nvidia-smi's peak. util%: mean of the last half of nvidia-smi samples (trainer rows: its NVML polls))")
print("=" * W)
if passed:
    print("gpu_check: PASSED")
else:
    print(f"gpu_check: FAILED ({len(problems)} problem(s)):")
    for p in problems[:15]:
        print("  - " + p)
sys.exit(2 if env.get("FATAL") else (0 if passed else 1))
PYEOF
  return "${PIPESTATUS[0]}"
}

# Packs logs/ so that a device tool returning a few files from $OUT gets them all (16 MiB a file at most
# on ours): a log over 4 MiB keeps its first and last MiB.
finish() {
  local rc=$1 f
  if [[ -n ${OUT:-} && -d $OUT && $(cd "$OUT" && pwd) == "$OUTDIR" ]]; then
    while IFS= read -r f; do
      { head -c 1048576 "$f"; printf '\n[... gpu_check: %s bytes cut here ...]\n' "$(($(wc -c <"$f") - 2097152))"; tail -c 1048576 "$f"; } \
        >"$f.cut" && mv "$f.cut" "$f"
    done < <(find "$LOGDIR" -type f -size +4M)
    # through a temporary name: a failed tar (no gzip) leaves logs/ and no broken archive
    if tar -czf "$OUTDIR/logs.tar.gz.tmp" -C "$OUTDIR" logs; then
      mv -f "$OUTDIR/logs.tar.gz.tmp" "$OUTDIR/logs.tar.gz" && rm -rf "$LOGDIR"
    else
      rm -f "$OUTDIR/logs.tar.gz.tmp"
    fi
  fi
  exit "$rc"
}
fatal() {
  log "STOP: $*"
  summarize "$*"
  local rc=$?
  printf 'gpu_check: STOPPED: %s\n' "$*"
  finish "$rc"
}

log "gpu_check $( ((QUICK)) && echo quick || echo full) run, budget ${BUDGET} s, logs in $OUTDIR"
[[ -n $PREV_NOTE ]] && log "$PREV_NOTE"

# ---- (a) GPU, driver, python, bundle --------------------------------------------------------------
step_begin host
NVSMI=$(command -v nvidia-smi || true)
[[ -z $NVSMI && -x /usr/local/nvidia/bin/nvidia-smi ]] && NVSMI=/usr/local/nvidia/bin/nvidia-smi
if [[ -z $NVSMI ]]; then
  step_end FAIL "nvidia-smi not found"
  fatal "no NVIDIA GPU/driver found: nvidia-smi is not on PATH (nor in /usr/local/nvidia/bin); this script needs a GPU host"
fi
if ! timeout 60 "$NVSMI" -L >"$LOGDIR/nvidia-smi-L.txt" 2>&1 || ! grep -q '^GPU [0-9]' "$LOGDIR/nvidia-smi-L.txt"; then
  step_end FAIL "nvidia-smi -L failed"
  fatal "no NVIDIA GPU/driver found: '$NVSMI -L' says: $(head -c 300 "$LOGDIR/nvidia-smi-L.txt" | tr '\n' ' ')"
fi
GPU_IDX=0
[[ ${CUDA_VISIBLE_DEVICES:-} =~ ^([0-9]+) ]] && GPU_IDX=${BASH_REMATCH[1]}
timeout 60 "$NVSMI" >"$LOGDIR/nvidia-smi.txt" 2>&1
timeout 60 "$NVSMI" -q -i "$GPU_IDX" >"$LOGDIR/nvidia-smi-q.txt" 2>&1
IFS=',' read -r GPU_NAME GPU_MEM DRIVER CAP < <(timeout 60 "$NVSMI" -i "$GPU_IDX" \
  --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader,nounits 2>/dev/null | head -1)
GPU_NAME=$(echo "${GPU_NAME:-?}" | xargs); GPU_MEM=$(echo "${GPU_MEM:-?}" | xargs)
DRIVER=$(echo "${DRIVER:-?}" | xargs); CAP=$(echo "${CAP:-?}" | xargs)
CUDA_VER=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$LOGDIR/nvidia-smi.txt" | head -1)
log "GPU $GPU_IDX: $GPU_NAME, $GPU_MEM MiB, compute capability $CAP, driver $DRIVER, CUDA ${CUDA_VER:-?} ($(grep -c '^GPU [0-9]' "$LOGDIR/nvidia-smi-L.txt") GPU(s) visible)"
others=$(timeout 30 "$NVSMI" -i "$GPU_IDX" --query-compute-apps=pid,process_name --format=csv,noheader 2>/dev/null | grep -c . || true)
((others > 0)) && log "WARNING: $others other process(es) already use GPU $GPU_IDX; timings will suffer"

TORCH_JSON="{}"
if ! command -v "$PY" >/dev/null 2>&1; then
  missing "python '$PY' not found (needs PyTorch + torchvision; --python or DDP_PYTHON to pick another)"
elif ! TORCH_JSON=$(timeout 120 "$PY" - 2>"$LOGDIR/python.err" <<'PYEOF'
import json, sys
import torch
d = {"python": sys.version.split()[0], "torch": torch.__version__,
     "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    import torchvision
    d["torchvision"] = torchvision.__version__
except Exception as e:  # the peer needs it; say so below, but keep what torch itself tells
    d["torchvision_error"] = f"{type(e).__name__}: {e}"
if torch.cuda.is_available():
    d["torch_gpu"] = torch.cuda.get_device_name()
    d["torch_cudnn"] = torch.backends.cudnn.version()
print(json.dumps(d))
PYEOF
); then
  missing "PyTorch in '$PY': $(tail -1 "$LOGDIR/python.err")"
  TORCH_JSON="{}"
else
  log "python: $TORCH_JSON"
  if [[ $TORCH_JSON == *'"torchvision_error"'* ]]; then
    tv_err=$("${HOSTENV[@]}" "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])["torchvision_error"])' "$TORCH_JSON" 2>/dev/null)
    missing "torchvision in '$PY' (the PyTorch peer's resnet18): ${tv_err:-see $LOGDIR/python.err}"
  fi
  [[ $TORCH_JSON == *'"cuda_available": true'* ]] || missing "PyTorch in '$PY' sees no GPU (torch.cuda.is_available() is False)"
fi

BUNDLE_COMMIT="?"
TESTS=()
if [[ ! -d $BUNDLE/bin && -f $BUNDLE/bundle.tar.xz ]]; then
  # bundle_deps --pack: unpack next to nothing else, so a read-only or small repo copy does not matter
  UNPACKED=$(mktemp -d "${TMPDIR:-/tmp}/ddp_bundle.XXXXXX")
  if command -v xz >/dev/null; then
    tar -xJf "$BUNDLE/bundle.tar.xz" -C "$UNPACKED" 2>"$LOGDIR/unpack.err"
  else
    ${TOOLPY:-python3} -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$BUNDLE/bundle.tar.xz" "$UNPACKED" 2>"$LOGDIR/unpack.err"
  fi
  if [[ -d $UNPACKED/bin ]]; then
    log "unpacked $BUNDLE/bundle.tar.xz into $UNPACKED"
    BUNDLE=$UNPACKED
  else
    missing "a readable bundle: unpacking $BUNDLE/bundle.tar.xz failed: $(tail -1 "$LOGDIR/unpack.err")"
  fi
fi
if [[ ! -d $BUNDLE/bin ]]; then
  missing "bundle '$BUNDLE' (make it on a connected x86-64 machine: tools/bundle_deps build .bundle; see docs/GPU_HOST.md)"
else
  BUNDLE=$(cd "$BUNDLE" && pwd)
  if [[ -f $BUNDLE/MANIFEST ]]; then
    cp "$BUNDLE/MANIFEST" "$LOGDIR/manifest.txt"
    BUNDLE_COMMIT=$(sed -n 's/^commit: //p' "$BUNDLE/MANIFEST" | head -1)
    # A bundle built from other sources than these scripts' is the usual way to spend a GPU run on old
    # code. Compared by the tree of the files (MANIFEST's source_tree, bundle_deps' scratch-index hash),
    # which holds where a copied checkout's .git is stale; by commit for a bundle without that line.
    bundle_tree=$(sed -n 's/^source_tree: //p' "$BUNDLE/MANIFEST" | head -1)
    head_commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
    here_tree=""
    # shellcheck source-path=SCRIPTDIR source=lib/source_tree.sh
    [[ -n $bundle_tree && -n $head_commit ]] && source "$ROOT/tools/lib/source_tree.sh" && here_tree=$(source_tree "$ROOT")
    if [[ -n $here_tree ]]; then
      [[ $here_tree == "$bundle_tree" ]] ||
        log "WARNING: this checkout's files differ from those the bundle was built from (commit ${BUNDLE_COMMIT:-?}): rebuild it (tools/bundle_deps) unless that is meant"
    elif [[ -z $head_commit ]]; then
      log "bundle commit not compared: $ROOT is not a git checkout here"
    elif [[ ${BUNDLE_COMMIT%% *} != "$head_commit" ]]; then
      log "WARNING: the bundle was built from commit ${BUNDLE_COMMIT:-?}, this checkout is at $head_commit: rebuild it (tools/bundle_deps) unless that is meant"
    elif [[ $BUNDLE_COMMIT == *" "* ]]; then
      log "WARNING: the bundle was built from commit $BUNDLE_COMMIT (uncommitted changes beyond it): its binaries may not be this checkout's code"
    fi
    stale_line=$(sed -n 's/^build_stale: //p' "$BUNDLE/MANIFEST" | head -1)
    [[ -n $stale_line ]] && log "WARNING: the bundle was made with --allow-stale from a build older than its sources: $stale_line"
    log "bundle: $BUNDLE, commit $BUNDLE_COMMIT, $(sed -n 's/^cudnn_built_against: /cuDNN built against /p' "$BUNDLE/MANIFEST"), $(sed -n 's/^cuda_code_in_binaries: /GPU code /p' "$BUNDLE/MANIFEST")"
    # A driver older than the toolkit the bundle was built with fails every binary at its first CUDA
    # call (cudaErrorInsufficientDriver): stop now, even with --keep-going, instead of spending the run.
    # Within one major version, CUDA's minor-version compatibility lets an older driver run the code.
    bundle_cuda=$(sed -n 's/^nvcc: .* \([0-9][0-9]*\.[0-9][0-9]*\)$/\1/p' "$BUNDLE/MANIFEST" | head -1)
    if [[ -n $bundle_cuda && -n ${CUDA_VER:-} ]] && ((${CUDA_VER%%.*} < ${bundle_cuda%%.*})); then
      step_end FAIL "driver too old for the bundle"
      fatal "the driver ($DRIVER) supports CUDA up to $CUDA_VER, the bundle was built with CUDA $bundle_cuda: every binary would fail at its first CUDA call; use a host whose driver supports CUDA ${bundle_cuda%%.*} (or build the bundle with a CUDA ${CUDA_VER%%.*} toolkit)"
    fi
    sm="sm_${CAP//./}"
    if grep -q '^cuda_code_in_binaries: .*sm_' "$BUNDLE/MANIFEST" && ! grep -q "^cuda_code_in_binaries: .*\\(${sm}\\|compute_\\)" "$BUNDLE/MANIFEST"; then
      log "WARNING: the bundle holds no $sm code and no PTX; its kernels cannot run on this $GPU_NAME"
    fi
  else
    log "WARNING: $BUNDLE/MANIFEST missing (not made by tools/bundle_deps?)"
  fi
  # The op tests first: they tell one failing kernel from another. Then the NCCL test (seconds; the only
  # check of the NCCL communicator), before the model tests, which may spend most of the shared time
  # budget building cuDNN plans: neither must be the one that budget starves.
  for b in "$BUNDLE"/bin/test_cuda_ops "$BUNDLE"/bin/test_comm_nccl "$BUNDLE"/bin/test_cuda_model "$BUNDLE"/bin/test_*; do
    [[ -f $b && -x $b ]] || continue
    dup=0; for t in "${TESTS[@]}"; do [[ $t == "$b" ]] && dup=1; done
    ((dup)) || TESTS+=("$b")
  done
  ((${#TESTS[@]})) || missing "GPU test binaries ($BUNDLE/bin/test_*)"
  [[ -x $BUNDLE/bin/bench_cuda_train ]] || missing "$BUNDLE/bin/bench_cuda_train (our benchmark)"
fi
[[ -f $ROOT/tools/bench/torch_gpu_train.py ]] || missing "$ROOT/tools/bench/torch_gpu_train.py (the PyTorch peer)"

# host.json feeds the summary
if [[ -n $TOOLPY ]]; then
  TORCH_JSON="$TORCH_JSON" GPU_NAME="$GPU_NAME" GPU_MEM="$GPU_MEM" DRIVER="$DRIVER" CAP="$CAP" CUDA_VER="${CUDA_VER:-?}" \
    BUNDLE_COMMIT="$BUNDLE_COMMIT" HOSTN="$(uname -n)" "$TOOLPY" - >"$LOGDIR/host.json" 2>/dev/null <<'PYEOF'
import json, os
e = os.environ
d = {"gpu_name": e["GPU_NAME"], "gpu_mem_mib": e["GPU_MEM"], "driver": e["DRIVER"], "compute_cap": e["CAP"],
     "cuda": e["CUDA_VER"], "bundle_commit": e["BUNDLE_COMMIT"], "hostname": e["HOSTN"]}
try:
    d.update(json.loads(e["TORCH_JSON"]))
except ValueError:
    pass
print(json.dumps(d))
PYEOF
fi

if [[ -s $LOGDIR/missing.txt ]]; then
  step_end FAIL "$(wc -l <"$LOGDIR/missing.txt") thing(s) missing"
  if ((!KEEP_GOING)); then
    fatal "missing: $(paste -sd ';' "$LOGDIR/missing.txt") (rerun with --keep-going to run what is there)"
  fi
else
  step_end ok
fi

# ---- (b) library paths, and does every bundled binary resolve? ------------------------------------
step_begin libraries
declare -A CANNOT_RUN=()
if [[ -d $BUNDLE/bin ]]; then
  if [[ -f $BUNDLE/env.sh ]]; then
    # shellcheck source=/dev/null
    DDP_PYTHON=$PY source "$BUNDLE/env.sh"
    # env.sh keeps the host's libstdc++ unless it lacks a version the bundle needs (then lib/cxx-fallback)
    log "libstdc++: ${DDP_LIBSTDCXX:-not chosen by env.sh (a bundle made before lib/cxx-fallback)}"
  else
    log "WARNING: $BUNDLE/env.sh missing; using $BUNDLE/lib and /usr/local/cuda/lib64 only"
    export LD_LIBRARY_PATH="$BUNDLE/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  env | grep -E '^(LD_LIBRARY_PATH|OPAL_|OMPI_|DDP_)' | sort >"$LOGDIR/env.txt"
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  [[ -n ${DDP_WHEEL_LIBS:-} ]] || log "WARNING: no nvidia-* wheel library dirs found through '$PY' (cuDNN/NCCL must then come from the toolkit)"
  bad=0
  for f in "$BUNDLE"/bin/* "$BUNDLE"/lib/*.so* "$BUNDLE"/lib/cxx-fallback/*.so*; do
    [[ -f $f ]] || continue
    out=$(ldd "$f" 2>&1)
    printf '== %s\n%s\n' "$f" "$out" >>"$LOGDIR/ldd.txt"
    nf=$(grep -E 'not found' <<<"$out" | sed 's/^[[:space:]]*//' | sort -u | paste -sd ';' -)
    if [[ -n $nf ]]; then
      log "UNRESOLVED in ${f#"$BUNDLE"/}: $nf"
      [[ $f == "$BUNDLE"/bin/* ]] && CANNOT_RUN[$f]="unresolved libraries: $nf"
      bad=$((bad + 1))
    fi
  done
  # What the key GPU libraries resolve to, and cuDNN's run-time-loaded parts (not visible to ldd).
  first=""
  for f in "$BUNDLE"/bin/*; do [[ -f $f ]] && grep -q libcudnn < <(ldd "$f" 2>/dev/null) && { first=$f; break; }; done
  [[ -n $first ]] && ldd "$first" | grep -E 'libcud(nn|art)|libcublas|libnccl|libnvrtc|libstdc\+\+' | sed 's/ (0x.*//; s/^[[:space:]]*/  /' | while IFS= read -r l; do log "$l"; done
  IFS=':' read -ra dirs <<<"$LD_LIBRARY_PATH"
  for sub in libcudnn_engines_precompiled.so.9 libcudnn_engines_runtime_compiled.so.9 libcudnn_heuristic.so.9 libcudnn_graph.so.9 libcudnn_cnn.so.9 libcudnn_ops.so.9; do
    found=""
    for d in "${dirs[@]}"; do [[ -e $d/$sub ]] && { found=$d; break; }; done
    if [[ -z $found ]]; then log "WARNING: $sub (loaded by cuDNN at run time) is in no LD_LIBRARY_PATH dir"; fi
  done
  # cuDNN on the host older than the one we compiled against is a known source of 'not supported'.
  built=$(sed -n 's/^cudnn_built_against: //p' "$BUNDLE/MANIFEST" 2>/dev/null)
  host_cudnn=$(sed -n 's/.*"torch_cudnn": \([0-9]*\).*/\1/p' <<<"$TORCH_JSON")
  if [[ $built =~ ^([0-9]+)\.([0-9]+) && -n $host_cudnn ]]; then
    bnum=$((BASH_REMATCH[1] * 10000 + BASH_REMATCH[2] * 100))
    ((host_cudnn < bnum)) && log "WARNING: the host's cuDNN ($host_cudnn, from the PyTorch wheel) is older than the one the bundle was built against ($built)"
  fi
  if ((bad)); then step_end FAIL "$bad bundled file(s) with unresolved libraries (see logs/ldd.txt)"; else step_end ok; fi
else
  step_end skipped "no bundle"
fi

# ---- (c) GPU tests ------------------------------------------------------------------------------------
# parse_xml FILE -> "passed failed skipped skipped-by-design names": `skipped` counts the tests that
# skipped because they saw no GPU (their message says so, or they gave none): on a GPU host those fail the
# check. A skip with another reason (e.g. a test of the non-CUDA build's error message) is by design.
parse_xml() {
  [[ -n $TOOLPY && -f $1 ]] || { echo "0 0 0 0"; return; }
  "${HOSTENV[@]}" "$TOOLPY" - "$1" <<'PYEOF' 2>/dev/null || echo "0 0 0 0 unparsable-xml"
import re, sys, xml.etree.ElementTree as ET
p = f = s = xs = 0
bad = []
no_gpu = re.compile(r"no (cuda|gpu)|no .*device|not visible|cuda_available", re.I)
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if tc.get("status") == "notrun":
        continue
    name = f"{tc.get('classname')}.{tc.get('name')}"
    sk = tc.find("skipped")
    if tc.find("failure") is not None or tc.find("error") is not None:
        f += 1; bad.append("FAILED:" + name)
    elif tc.get("result") == "skipped" or sk is not None:
        msg = (sk.get("message") or "") if sk is not None else ""
        if not msg.strip() or no_gpu.search(msg):
            s += 1; bad.append("SKIPPED:" + name)
        else:
            xs += 1; bad.append("BYDESIGN:" + name)
    else:
        p += 1
print(p, f, s, xs, " ".join(bad[:20]))
PYEOF
}

step_begin tests
TESTS_T0=$SECONDS
nfail=0
gtest_ran=0   # tests the gtest binaries ran (passed, failed or skipped), for a --gtest-filter matching nothing
gtest_runs=0  # gtest binaries started (not those left out: unresolved libraries, time budget)
nrows=${#TESTS[@]}
for b in "${TESTS[@]}"; do
  name=$(basename "$b")
  if [[ -n ${CANNOT_RUN[$b]:-} ]]; then
    printf '%s\t%s\t0\t0\t0\t0\t%s\n' "$name" -1 "not run: ${CANNOT_RUN[$b]}" >>"$LOGDIR/tests.tsv"; nfail=$((nfail + 1)); continue
  fi
  left=$((TESTS_BUDGET - (SECONDS - TESTS_T0)))
  t=$(cap "$TEST_TIMEOUT"); ((left < t)) && t=$left
  if ((t < 10)); then
    printf '%s\t%s\t0\t0\t0\t0\t%s\n' "$name" -1 "not run: time budget spent" >>"$LOGDIR/tests.tsv"; nfail=$((nfail + 1))
    log "$name: not run (time budget spent)"; continue
  fi
  args=(--gtest_output="xml:$LOGDIR/$name.xml" --gtest_color=no)
  [[ -n $GTEST_FILTER ]] && args+=(--gtest_filter="$GTEST_FILTER")
  t0=$SECONDS
  timeout -k 10 "$t" "$b" "${args[@]}" >"$LOGDIR/$name.log" 2>&1
  rc=$?
  read -r p f s xs names < <(parse_xml "$LOGDIR/$name.xml")
  if [[ ! -f $LOGDIR/$name.xml ]]; then
    # No XML (gtest writes it at the end): count the tests the log shows finished before the timeout or crash.
    p=$(grep -c '^\[       OK \] .*([0-9]* ms)$' "$LOGDIR/$name.log")
    f=$(grep -c '^\[  FAILED  \] .*([0-9]* ms)$' "$LOGDIR/$name.log")
    s=$(grep -c '^\[  SKIPPED \] .*([0-9]* ms)$' "$LOGDIR/$name.log")
    names=$(grep -E '^\[  (FAILED|SKIPPED) +\] .*\([0-9]+ ms\)$' "$LOGDIR/$name.log" \
      | sed -E 's/^\[  (FAILED|SKIPPED) +\] ([^ ,]+).*/\1:\2/' | head -20 | paste -sd ' ' -)
  fi
  note=""
  last_run=$(grep '^\[ RUN      \]' "$LOGDIR/$name.log" | tail -1 | sed 's/^\[ RUN      \] //' | cut -c1-80)
  if ((rc == 124 || rc == 137)); then
    note="timed out after $t s in $last_run"
  elif [[ ! -f $LOGDIR/$name.xml ]]; then
    note="exit $rc without its XML (crash?; counts from the log) in $last_run: $(grep -v '^\[' "$LOGDIR/$name.log" | tail -1 | cut -c1-100)"
  elif ((rc != 0 && f == 0)); then note="exit $rc without a test failure (crash?): $(grep -v '^\[' "$LOGDIR/$name.log" | tail -1 | cut -c1-120)"
  fi
  ((s > 0)) && note="${note:+$note; }skipped: $(tr ' ' '\n' <<<"${names:-}" | grep '^SKIPPED:' | sed 's/^SKIPPED://' | head -5 | paste -sd ',' -)"
  ((xs > 0)) && note="${note:+$note; }$xs skipped by design: $(tr ' ' '\n' <<<"${names:-}" | grep '^BYDESIGN:' | sed 's/^BYDESIGN://' | head -3 | paste -sd ',' -)"
  ran=$((p + f + s + xs))
  gtest_ran=$((gtest_ran + ran))
  gtest_runs=$((gtest_runs + 1))
  if ((ran == 0 && rc == 0)); then
    if [[ -n $GTEST_FILTER ]]; then note="filtered out: none of its tests matches --gtest-filter '$GTEST_FILTER'"
    else note="ran no tests (exit 0, no test in its XML or log)"; fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$p" "$f" "$s" "$((SECONDS - t0))" "$note" >>"$LOGDIR/tests.tsv"
  log "$name: rc $rc, $p passed, $f failed, $s skipped ($((SECONDS - t0)) s)${note:+ - $note}"
  [[ -n ${names:-} ]] && tr ' ' '\n' <<<"$names" | grep '^FAILED:' | head -10 | while IFS= read -r l; do log "   $l"; done
  if ((rc != 0 || f > 0)) || { ((s > 0)) && ((!ALLOW_SKIP)); } || { ((ran == 0)) && [[ -z $GTEST_FILTER ]]; }; then
    nfail=$((nfail + 1))
  fi
done
# bench_cuda_train --selftest: a few steps per AMP mode, loss finite and falling (counted as one test).
ours_bin="$BUNDLE/bin/bench_cuda_train"
if [[ -x $ours_bin && -z ${CANNOT_RUN[$ours_bin]:-} ]] && (($(cap 120) >= 20)); then
  t0=$SECONDS
  timeout -k 10 "$(cap 120)" "$ours_bin" --selftest >"$LOGDIR/bench_selftest.log" 2>&1
  rc=$?
  note=""
  ((rc == 0)) || note="exit $rc: $(grep -v '^[[:space:]]*$' "$LOGDIR/bench_selftest.log" | tail -1 | cut -c1-120)"
  printf '%s\t%s\t%s\t%s\t0\t%s\t%s\n' "bench_cuda_train --selftest" "$rc" "$((rc == 0 ? 1 : 0))" "$((rc == 0 ? 0 : 1))" \
    "$((SECONDS - t0))" "$note" >>"$LOGDIR/tests.tsv"
  log "bench_cuda_train --selftest: rc $rc ($((SECONDS - t0)) s)${note:+ - $note}"
  ((rc == 0)) || nfail=$((nfail + 1))
  nrows=$((nrows + 1))
fi
if ((${#TESTS[@]} == 0)); then step_end FAIL "no test binaries"
elif [[ -n $GTEST_FILTER ]] && ((gtest_runs > 0 && gtest_ran == 0)); then
  step_end FAIL "--gtest-filter '$GTEST_FILTER' matched no test in any of the $gtest_runs test binaries run"
elif ((nfail)); then step_end FAIL "$nfail of $nrows test runs not clean"
else step_end ok; fi

# ---- (d) benchmarks with GPU utilisation sampling --------------------------------------------------
# jsonl_result FILE: a RESULT json from a train_resnet18 --jsonl file: img/s over the log windows after
# the first (which holds start-up: plan building, loader warm-up), the trainer's own NVML utilisation
# over the same windows, peak tracked device memory, last loss. Prints nothing without train records.
jsonl_result() {
  [[ -n $TOOLPY && -s $1 ]] || return 0
  "${HOSTENV[@]}" "$TOOLPY" - "$1" "$BATCH" <<'PYEOF' 2>/dev/null
import json, math, sys
recs = []
for line in open(sys.argv[1]):
    try:
        recs.append(json.loads(line))
    except ValueError:
        pass
batch = int(sys.argv[2])
train = [r for r in recs if r.get("type") == "train" and isinstance(r.get("img_per_s"), (int, float))
         and r["img_per_s"] > 0 and isinstance(r.get("step"), (int, float))]
summ = next((r for r in reversed(recs) if r.get("type") == "summary"), {})
if not train:
    sys.exit(0)
steady = train[1:] if len(train) > 1 else train
prev = train[0]["step"] if len(train) > 1 else 0
first = prev
imgs = secs = 0.0
for r in steady:
    n = (r["step"] - prev) * batch
    prev = r["step"]
    imgs += n
    secs += n / r["img_per_s"]
ips = imgs / secs if secs > 0 else None
util = [r["gpu_util"] for r in steady if isinstance(r.get("gpu_util"), (int, float))]
loss = train[-1].get("loss")
peak = summ.get("peak_device_bytes")
print(json.dumps({"impl": "train_resnet18", "batch": batch, "img_per_s": ips,
                  "ms_per_step": batch * 1e3 / ips if ips else None,
                  "steady_steps": prev - first, "steady_windows": len(steady),
                  "gpu_util_mean": sum(util) / len(util) if util else None,
                  "peak_mem_mb": peak / 2**20 if isinstance(peak, (int, float)) and peak > 0 else None,
                  "overall_img_per_s": summ.get("img_per_s"), "steps": summ.get("steps"), "loss": loss,
                  "loss_finite": isinstance(loss, (int, float)) and math.isfinite(loss)}))
PYEOF
}

# run_bench KEY LIMIT CMD...: runs CMD with nvidia-smi sampling beside it; keeps its RESULT json (with
# BENCH_JSONL set and no RESULT line: the one jsonl_result makes of that file).
BENCH_JSONL=""
run_bench() {
  local key=$1 limit=$2 t rc t0 res
  shift 2
  t=$(cap "$limit")
  if ((t < 20)); then
    printf '%s\t%s\t%s\n' -1 0 "not run: time budget spent" >"$LOGDIR/$key.status"
    log "$key: not run (time budget spent)"; return 1
  fi
  local shown=("$@")
  # The Python steps start with HOSTENV (env and the host's whole LD_LIBRARY_PATH): not worth a log line.
  [[ ${shown[0]} == env && ${shown[*]:0:${#HOSTENV[@]}} == "${HOSTENV[*]}" ]] && shown=("${shown[@]:${#HOSTENV[@]}}")
  log "$key: ${shown[*]} (limit $t s)"
  "$NVSMI" -i "$GPU_IDX" --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm,power.draw \
    --format=csv,noheader,nounits -lms 250 >"$LOGDIR/$key.util.csv" 2>/dev/null &
  SAMPLER=$!
  t0=$SECONDS
  PYTHONUNBUFFERED=1 timeout -k 10 "$t" "$@" >"$LOGDIR/$key.log" 2>&1
  rc=$?
  stop_sampler
  res=$(grep '^RESULT ' "$LOGDIR/$key.log" | tail -1 | cut -c8-)
  [[ -z $res && -n $BENCH_JSONL ]] && res=$(jsonl_result "$BENCH_JSONL")
  CHILD_NOTE=""
  if [[ -n $res ]]; then
    printf '%s\n' "$res" >"$LOGDIR/$key.json"
  fi
  if ((rc == 124 || rc == 137)); then CHILD_NOTE="killed after $t s"
  elif ((rc != 0)); then CHILD_NOTE="exit $rc: $(grep -v '^RESULT ' "$LOGDIR/$key.log" | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-100)"
  elif [[ -z $res ]]; then CHILD_NOTE="no RESULT line in output"
  fi
  printf '%s\t%s\t%s\n' "$rc" "$((SECONDS - t0))" "$CHILD_NOTE" >"$LOGDIR/$key.status"
  log "$key: rc $rc ($((SECONDS - t0)) s) ${res:0:300}${CHILD_NOTE:+ - $CHILD_NOTE}"
  [[ $rc == 0 && -n $res ]]
}

step_begin benchmark
read -ra ours_extra <<<"$OURS_ARGS"
TORCH_PEER="$ROOT/tools/bench/torch_gpu_train.py"
have_torch=0
[[ $TORCH_JSON == *'"cuda_available": true'* && -f $TORCH_PEER ]] && have_torch=1
ours_bin="$BUNDLE/bin/bench_cuda_train"
bench_bad=0
for amp in fp16 bf16; do
  if [[ -x $ours_bin && -z ${CANNOT_RUN[$ours_bin]:-} ]]; then
    # --cuda-graph: the same process also times the step as one CUDA graph (a note beside the figure).
    run_bench "ours_$amp" "$BENCH_TIMEOUT" "$ours_bin" --amp "$amp" --batch "$BATCH" --size "$SIZE" --cuda-graph \
      "${ours_extra[@]}" || bench_bad=$((bench_bad + 1))
    # Two variants of the same step, notes beside the figure (not required runs): what --deterministic
    # costs, and what a timed engine search per conv (--autotune, like PyTorch's cudnn.benchmark, which
    # the peer uses) gains over cuDNN's heuristics.
    run_bench "ours_${amp}_det" 60 "$ours_bin" --amp "$amp" --batch "$BATCH" --size "$SIZE" --deterministic \
      "${ours_extra[@]}"
    run_bench "ours_${amp}_tuned" 90 "$ours_bin" --amp "$amp" --batch "$BATCH" --size "$SIZE" --autotune \
      "${ours_extra[@]}"
  else
    printf '%s\t%s\t%s\n' -1 0 "not run: ${CANNOT_RUN[$ours_bin]:-bench_cuda_train not in bundle}" >"$LOGDIR/ours_$amp.status"
    bench_bad=$((bench_bad + 1))
  fi
  if ((have_torch)); then
    run_bench "torch_eager_$amp" "$BENCH_TIMEOUT" "${HOSTENV[@]}" "$PY" "$TORCH_PEER" --amp "$amp" --batch "$BATCH" --size "$SIZE" "${TORCH_STEPS[@]}" \
      || bench_bad=$((bench_bad + 1))
  else
    printf '%s\t%s\t%s\n' -1 0 "not run: PyTorch with a GPU not available" >"$LOGDIR/torch_eager_$amp.status"
    bench_bad=$((bench_bad + 1))
  fi
done
if ((bench_bad)); then step_end FAIL "$bench_bad of 4 required runs (ours, torch eager) gave no result"; else step_end ok; fi

# ---- (e) end to end: train_resnet18 on synthetic data, then on HDF5 shards packed here --------------
# Both runs: fp16 with dynamic loss scaling, NCCL with one rank (singleton MPI_Init through env.sh), the
# benchmark's batch and size, the same number of steps. The synthetic run also writes a checkpoint and
# counts as a test. Their img/s (steady JSONL windows) show what the trainer's per-step host work and
# then the data path (decode + augment on this host's cores) cost against bench_cuda_train.
e2e_status() { printf '%s\t%s\t%s\n' "$2" "$3" "$4" >"$LOGDIR/$1.status"; }  # KEY RC SECONDS NOTE
step_begin e2e
train_bin="$BUNDLE/bin/train_resnet18"
jpeg_bin="$BUNDLE/bin/make_bench_jpegs"
pack_bin="$BUNDLE/bin/pack_imagenet"
SYNTH_TEST="train_resnet18 --backend cuda (synthetic)"
e2e_bad=0
RESUME_TEST="train_resnet18 --resume (synthetic)"
e2e_base=(--backend cuda --comm nccl --amp fp16 --image-size "$SIZE" --batch-size "$BATCH" --no-eval --progress lines
          --log-every 10)
e2e_common=("${e2e_base[@]}" --max-steps "$E2E_STEPS")
synth_args=(--data synthetic --synthetic-size $((BATCH * 16)) --synthetic-classes 1000 --checkpoint-every 1000000)
if ((!E2E)); then
  for k in train_synth_fp16 train_hdf5_fp16; do e2e_status "$k" 0 0 "skipped (--no-e2e)"; done
  step_end skipped "--no-e2e"
else
  # Checkpoint, JPEGs and shards live outside logs/ (a checkpoint is ~100 MB; logs/ travels back packed).
  E2E_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ddp_e2e.XXXXXX")
  why=""
  if [[ ! -x $train_bin ]]; then why="train_resnet18 not in the bundle (build it before tools/bundle_deps)"
  elif [[ -n ${CANNOT_RUN[$train_bin]:-} ]]; then why=${CANNOT_RUN[$train_bin]}
  fi
  # (1) synthetic data: the trainer's own cost, and a test (exit 0 and a checkpoint written)
  if [[ -n $why ]]; then
    e2e_status train_synth_fp16 -1 0 "not run: $why"
    printf '%s\t-1\t0\t1\t0\t0\tnot run: %s\n' "$SYNTH_TEST" "$why" >>"$LOGDIR/tests.tsv"
    e2e_bad=$((e2e_bad + 1))
  else
    rm -f "$LOGDIR/train_synth_fp16.jsonl"
    BENCH_JSONL="$LOGDIR/train_synth_fp16.jsonl"
    run_bench train_synth_fp16 150 "$train_bin" "${e2e_common[@]}" "${synth_args[@]}" --checkpoint-dir "$E2E_DIR/ckpt" \
      --jsonl "$BENCH_JSONL" || e2e_bad=$((e2e_bad + 1))
    BENCH_JSONL=""
    ls -la "$E2E_DIR/ckpt" >"$LOGDIR/train_ckpt.txt" 2>&1
    IFS=$'\t' read -r rc secs note <"$LOGDIR/train_synth_fp16.status"
    if ((rc == 0)) && ! ls "$E2E_DIR"/ckpt/*.h5 >/dev/null 2>&1; then rc=1; note="no checkpoint written"; fi
    printf '%s\t%s\t%s\t%s\t0\t%s\t%s\n' "$SYNTH_TEST" "$rc" "$((rc == 0 ? 1 : 0))" "$((rc == 0 ? 0 : 1))" "$secs" \
      "$note" >>"$LOGDIR/tests.tsv"
  fi
  # (2) HDF5 shards: natural-looking JPEGs made here, packed as ImageNet would be (shorter side 256)
  if [[ -z $why ]]; then
    if [[ ! -x $jpeg_bin ]]; then why="make_bench_jpegs not in the bundle (build it before tools/bundle_deps)"
    elif [[ ! -x $pack_bin ]]; then why="pack_imagenet not in the bundle (build it before tools/bundle_deps)"
    elif [[ -n ${CANNOT_RUN[$jpeg_bin]:-} ]]; then why="make_bench_jpegs: ${CANNOT_RUN[$jpeg_bin]}"
    elif [[ -n ${CANNOT_RUN[$pack_bin]:-} ]]; then why="pack_imagenet: ${CANNOT_RUN[$pack_bin]}"
    elif (($(cap 150) < 60)); then why="time budget spent"
    fi
  fi
  jpeg_s=0 pack_s=0 jpeg_mb=0 shard_mb=0
  if [[ -z $why ]]; then
    t0=$SECONDS
    log "make_bench_jpegs: $E2E_IMAGES images into $E2E_DIR"
    timeout -k 10 "$(cap 120)" "$jpeg_bin" "$E2E_DIR/jpeg" "$E2E_IMAGES" >"$LOGDIR/make_bench_jpegs.log" 2>&1 \
      || why="make_bench_jpegs failed (exit $?): $(tail -1 "$LOGDIR/make_bench_jpegs.log" | cut -c1-120)"
    jpeg_s=$((SECONDS - t0))
    log "$(tail -1 "$LOGDIR/make_bench_jpegs.log" | cut -c1-200) [$jpeg_s s]"
  fi
  if [[ -z $why ]]; then
    jpeg_mb=$(du -sm "$E2E_DIR/jpeg" | cut -f1)
    t0=$SECONDS
    timeout -k 10 "$(cap 120)" "$pack_bin" --input "$E2E_DIR/jpeg" --output "$E2E_DIR/shards" --shards 1 --splits train \
      --no-progress >"$LOGDIR/pack_imagenet.log" 2>&1 \
      || why="pack_imagenet failed (exit $?): $(grep -v '^[[:space:]]*$' "$LOGDIR/pack_imagenet.log" | tail -1 | cut -c1-120)"
    pack_s=$((SECONDS - t0))
    rm -rf "$E2E_DIR/jpeg"  # the shards are what training reads
    [[ -z $why ]] && shard_mb=$(du -sm "$E2E_DIR/shards" | cut -f1)
    log "pack_imagenet: ${shard_mb} MB of shards from $jpeg_mb MB of JPEGs in $pack_s s"
  fi
  if [[ -z $why ]]; then
    BENCH_JSONL="$LOGDIR/train_hdf5_fp16.jsonl"
    run_bench train_hdf5_fp16 180 "$train_bin" "${e2e_common[@]}" --data "$E2E_DIR/shards" --jsonl "$BENCH_JSONL" \
      || e2e_bad=$((e2e_bad + 1))
    BENCH_JSONL=""
  else
    e2e_status train_hdf5_fp16 -1 0 "not run: $why"
    e2e_bad=$((e2e_bad + 1))
  fi
  # (3) --resume from the synthetic run's checkpoint: the CUDA side of a resume (weights and momentum
  # through the PyTorch layout, BN statistics, the fp16 loss scale), 20 more steps. A test: exit 0, the
  # scale the first run saved is the one resumed, and a checkpoint at the new step.
  rsteps=$((E2E_STEPS + 20))
  ckpt_at() { printf '%s/ckpt/ckpt-%010d.h5' "$E2E_DIR" "$1"; }  # the trainer's checkpoint_file_name
  first_ckpt=$(ckpt_at "$E2E_STEPS")
  if [[ ! -f $first_ckpt ]]; then
    printf '%s\t-1\t0\t1\t0\t0\tnot run: no checkpoint at step %s from the synthetic run\n' "$RESUME_TEST" "$E2E_STEPS" \
      >>"$LOGDIR/tests.tsv"
  elif (($(cap 90) < 30)); then
    printf '%s\t-1\t0\t1\t0\t0\tnot run: time budget spent\n' "$RESUME_TEST" >>"$LOGDIR/tests.tsv"
  else
    t0=$SECONDS
    log "$RESUME_TEST: to step $rsteps from $first_ckpt"
    timeout -k 10 "$(cap 90)" "$train_bin" "${e2e_base[@]}" --max-steps "$rsteps" "${synth_args[@]}" \
      --checkpoint-dir "$E2E_DIR/ckpt" --resume auto >"$LOGDIR/train_resume_fp16.log" 2>&1
    rc=$?
    # The trainer names the loss scale in its checkpoint line and in its 'resumed from' line.
    saved=$(sed -n "s/.*checkpoint .*ckpt-0*${E2E_STEPS}\.h5 (.*loss scale \([0-9.e+-]*\)).*/\1/p" \
      "$LOGDIR/train_synth_fp16.log" | tail -1)
    resumed=$(sed -n "s/.*resumed from .*global step ${E2E_STEPS}, loss scale \([0-9.e+-]*\).*/\1/p" \
      "$LOGDIR/train_resume_fp16.log" | tail -1)
    note=""
    if ((rc != 0)); then
      note="exit $rc: $(grep -v '^[[:space:]]*$' "$LOGDIR/train_resume_fp16.log" | tail -1 | cut -c1-100)"
    elif [[ -z $resumed ]]; then rc=1; note="no 'resumed from ... global step $E2E_STEPS, loss scale ...' line"
    elif [[ -n $saved && $saved != "$resumed" ]]; then rc=1; note="loss scale $saved saved, $resumed resumed"
    elif [[ ! -f $(ckpt_at "$rsteps") ]]; then rc=1; note="no checkpoint at step $rsteps"
    elif [[ -z $saved ]]; then note="the first run's log names no loss scale: not compared"
    fi
    printf '%s\t%s\t%s\t%s\t0\t%s\t%s\n' "$RESUME_TEST" "$rc" "$((rc == 0 ? 1 : 0))" "$((rc == 0 ? 0 : 1))" \
      "$((SECONDS - t0))" "$note" >>"$LOGDIR/tests.tsv"
    log "$RESUME_TEST: rc $rc ($((SECONDS - t0)) s), loss scale saved ${saved:-?}, resumed ${resumed:-?}${note:+ - $note}"
  fi
  # (4) --deterministic, twice from the same seed: every logged loss must be the same (a test). The whole
  # training step (data order and augmentation, fp16 loss scaling, cuDNN, NCCL) must repeat bit for bit.
  DET_TEST="train_resnet18 --deterministic (2 runs)"
  if [[ ! -x $train_bin || -n ${CANNOT_RUN[$train_bin]:-} ]]; then
    printf '%s\t-1\t0\t1\t0\t0\tnot run: %s\n' "$DET_TEST" "${CANNOT_RUN[$train_bin]:-train_resnet18 not in the bundle}" \
      >>"$LOGDIR/tests.tsv"
  elif (($(cap 90) < 40)); then
    printf '%s\t-1\t0\t1\t0\t0\tnot run: time budget spent\n' "$DET_TEST" >>"$LOGDIR/tests.tsv"
  else
    t0=$SECONDS rc=0 note=""
    log "$DET_TEST: 60 steps each"
    for k in 1 2; do
      timeout -k 10 "$(cap 45)" "$train_bin" "${e2e_base[@]}" --max-steps 60 --deterministic "${synth_args[@]}" \
        --checkpoint-dir "$E2E_DIR/det$k" --jsonl "$LOGDIR/train_det$k.jsonl" >"$LOGDIR/train_det$k.log" 2>&1
      rc=$?
      if ((rc != 0)); then
        note="run $k: exit $rc: $(grep -v '^[[:space:]]*$' "$LOGDIR/train_det$k.log" | tail -1 | cut -c1-100)"; break
      fi
    done
    if ((rc == 0)); then
      det_losses() { sed -n 's/.*"type": "train", "step": \([0-9]*\),.*"loss": \([^,}]*\).*/\1 \2/p' "$1"; }
      a=$(det_losses "$LOGDIR/train_det1.jsonl") b=$(det_losses "$LOGDIR/train_det2.jsonl")
      if [[ -z $a ]]; then rc=1; note="no train records in $LOGDIR/train_det1.jsonl"
      elif [[ $a != "$b" ]]; then
        # The first logged step where they part (or where one run's log ends).
        first=$(paste <(printf '%s\n' "$a") <(printf '%s\n' "$b") | awk -F '\t' '$1 != $2 {
          split($1, x, " "); split($2, y, " ")
          print "step " (x[1] != "" ? x[1] : y[1]) ": loss " (x[2] != "" ? x[2] : "none") " vs " (y[2] != "" ? y[2] : "none"); exit }')
        rc=1; note="losses differ, first at ${first:-?}"
      else note="$(wc -l <<<"$a") logged losses the same"; fi
    fi
    printf '%s\t%s\t%s\t%s\t0\t%s\t%s\n' "$DET_TEST" "$rc" "$((rc == 0 ? 1 : 0))" "$((rc == 0 ? 0 : 1))" \
      "$((SECONDS - t0))" "$note" >>"$LOGDIR/tests.tsv"
    log "$DET_TEST: rc $rc ($((SECONDS - t0)) s) - $note"
  fi
  printf '{"images": %s, "steps": %s, "make_jpegs_s": %s, "jpeg_mb": %s, "pack_s": %s, "shard_mb": %s}\n' \
    "$E2E_IMAGES" "$E2E_STEPS" "$jpeg_s" "${jpeg_mb:-0}" "$pack_s" "${shard_mb:-0}" >"$LOGDIR/e2e.json"
  rm -rf "$E2E_DIR"
  if ((e2e_bad)); then step_end FAIL "$e2e_bad of 2 train_resnet18 runs gave no result${why:+ ($why)}"; else step_end ok; fi
fi

# ---- (f) torch.compile, last: the least needed figure, and the slowest -------------------------------
step_begin compile
if ((QUICK)); then
  for amp in fp16 bf16; do printf '%s\t%s\t%s\n' 0 0 "skipped (--quick)" >"$LOGDIR/torch_compile_$amp.status"; done
  step_end skipped "--quick"
elif ((have_torch)); then
  for amp in fp16 bf16; do
    # A compile that fails or takes too long is a note, not a failure of the check.
    if ! run_bench "torch_compile_$amp" "$COMPILE_TIMEOUT" "${HOSTENV[@]}" "$PY" "$TORCH_PEER" --compile --amp "$amp" --batch "$BATCH" --size "$SIZE" "${TORCH_STEPS[@]}"; then
      note="skipped: ${CHILD_NOTE:-torch.compile failed}"
      [[ $CHILD_NOTE == killed* ]] && note="skipped: compile + run took over $COMPILE_TIMEOUT s (or the time budget)"
      [[ -f $LOGDIR/torch_compile_$amp.status ]] && IFS=$'\t' read -r rc secs _ <"$LOGDIR/torch_compile_$amp.status"
      printf '%s\t%s\t%s\n' "${rc:--1}" "${secs:-0}" "$note" >"$LOGDIR/torch_compile_$amp.status"
    fi
  done
  step_end ok
else
  for amp in fp16 bf16; do printf '%s\t%s\t%s\n' -1 0 "not run: PyTorch with a GPU not available" >"$LOGDIR/torch_compile_$amp.status"; done
  step_end skipped "no PyTorch with a GPU"
fi
timeout 30 "$NVSMI" -q -i "$GPU_IDX" -d CLOCK,PERFORMANCE,TEMPERATURE,POWER >"$LOGDIR/nvidia-smi-after.txt" 2>&1

# ---- (g) summary, printed last -------------------------------------------------------------------
log "logs: $OUTDIR (summary.json, gpu_check.log, logs/)"
summarize ""
finish $?
