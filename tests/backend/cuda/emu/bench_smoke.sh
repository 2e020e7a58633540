#!/usr/bin/env bash
# bench_cuda_train built against the CPU emulation of CUDA (emu.h): the benchmark's own code runs as
# tools/gpu_check.sh will run it on a GPU host (its self-test, a timed run, the CUDA-graph attempt),
# and its RESULT line carries what gpu_check.sh reads. Figures from here are CPU time, not GPU time.
# usage: bench_smoke.sh BENCH_CUDA_TRAIN_EMU
set -euo pipefail
bench=${1:?usage: bench_smoke.sh BENCH_CUDA_TRAIN_EMU}
fail() { printf 'bench_smoke: FAIL: %s\n' "$*" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# The command line: --help on stdout (exit 0); a bad argument is one line on stderr and exit 2, as
# train_resnet18 and gpu_check.sh do, found before any GPU work (--size below 32 included).
"$bench" --help 2>/dev/null | grep -q '^usage: bench_cuda_train' || fail "--help printed no usage on stdout"
for bad in "--size 16" "--warmup x" "--iters 0" "--amp fp8" "--bogus"; do
  set +e
  # shellcheck disable=SC2086  # $bad is two words on purpose
  err=$("$bench" $bad 2>&1 >/dev/null); rc=$?
  set -e
  [[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == "error: bench_cuda_train: "* && $err != *"/src/"* ]] ||
    fail "'$bad': exit $rc (want 2), stderr: $err"
done
"$bench" --amp bf16 --warmup 0 --iters 1 --batch 2 --size 32 --classes 10 >"$out" 2>&1 || { cat "$out"; fail "--warmup 0 refused"; }

"$bench" --selftest >"$out" 2>&1 || { cat "$out"; fail "--selftest exited $?"; }

for amp in fp16 bf16 off; do
  "$bench" --amp "$amp" --batch 4 --size 64 --warmup 1 --iters 2 --classes 10 --cuda-graph >"$out" 2>&1 ||
    { cat "$out"; fail "--amp $amp exited non-zero"; }
  result=$(grep '^RESULT ' "$out" | tail -1) || { cat "$out"; fail "--amp $amp printed no RESULT line"; }
  /usr/bin/python3 - "$amp" "${result#RESULT }" <<'PYEOF' || { cat "$out"; fail "--amp $amp: bad RESULT"; }
import json, sys
amp, r = sys.argv[1], json.loads(sys.argv[2])
assert r["amp"] == amp, r
for k in ("img_per_s", "ms_per_step", "peak_mem_mb", "warmup_s", "plans_built", "cudnn_runtime", "cudnn_built"):
    assert isinstance(r.get(k), (int, float)) and r[k] >= 0, (k, r)
assert r["img_per_s"] > 0 and r["plans_built"] > 0 and r["peak_mem_mb"] > 0, r
# fp16 trains with the dynamic loss scaler (as the PyTorch peer's GradScaler); the fixed-scale step
# is timed beside it. The other modes have neither.
if amp == "fp16":
    assert isinstance(r.get("loss_scale"), (int, float)) and 0 < r["loss_scale"] <= 65536, r
    assert isinstance(r.get("skipped_steps"), int) and 0 <= r["skipped_steps"] <= 2, r
    assert isinstance(r.get("fixed_scale_img_per_s"), (int, float)) and r["fixed_scale_img_per_s"] > 0, r
else:
    assert not {"loss_scale", "skipped_steps", "fixed_scale_img_per_s"} & set(r), r
# The captured step (emulated graphs): replayed and timed, with no error.
assert "graph_error" not in r, r
for k in ("graph_img_per_s", "graph_ms_per_step", "graph_over_eager"):
    assert isinstance(r.get(k), (int, float)) and r[k] > 0, (k, r)
PYEOF
done
echo "bench_smoke: self-test and fp16/bf16/off timed runs passed under the emulation"
