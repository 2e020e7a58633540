#!/usr/bin/env bash
# bench_cuda_conv built against the CPU emulation of CUDA: the convs it walks are the step's (shapes
# checked against ResNet18 at 64 px), every row is timed, bad arguments exit 2 with one line, and the
# RESULT line holds the totals. Figures from here are CPU time, not GPU time.
# usage: conv_bench_smoke.sh BENCH_CUDA_CONV_EMU
set -euo pipefail
bench=${1:?usage: conv_bench_smoke.sh BENCH_CUDA_CONV_EMU}
fail() { printf 'conv_bench_smoke: FAIL: %s\n' "$*" >&2; exit 1; }
"$bench" --help | grep -q '^usage: bench_cuda_conv' || fail "--help printed no usage on stdout"
for bad in "--size 16" "--iters 0" "--amp fp8" "--stem-cpad 2" "--stem-cpad 8,,4" "--bogus"; do
  set +e
  # shellcheck disable=SC2086  # $bad is two words on purpose
  err=$("$bench" $bad 2>&1 >/dev/null); rc=$?
  set -e
  [[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == "error: bench_cuda_conv: "* ]] || fail "'$bad': exit $rc (want 2), stderr: $err"
done
out=$("$bench" --amp bf16 --batch 2 --size 64 --iters 1 --stem-cpad 4,8) || { printf '%s\n' "$out"; fail "exit $?"; }
printf '%s\n' "$out"
# ResNet18 at 64 px: the stem sees 64x64 (twice: 4 and 8 channels, fprop + wgrad), layer1 16x16,
# layer2's first conv and downsample 16x16 then 8x8, layer3 8 -> 4, layer4 4 -> 2.
grep -qE '^conv1 \(4 ch\) +2 4 64 64 -> 64 7x7 /2 +fprop' <<<"$out" || fail "no stem row at 4 channels"
grep -qE '^conv1 \(8 ch\) +2 8 64 64 -> 64 7x7 /2 +wgrad' <<<"$out" || fail "no stem wgrad row at 8 channels"
grep -qE '^layer1\.1\.conv2 +2 64 16 16 -> 64 3x3 /1 +dgrad' <<<"$out" || fail "layer1.1.conv2 not at 16x16"
grep -qE '^layer2\.0\.downsample\.0 +2 64 16 16 -> 128 1x1 /2 +wgrad' <<<"$out" || fail "layer2's downsample not at 16x16"
grep -qE '^layer4\.1\.conv1 +2 512 2 2 -> 512 3x3 /1 +fprop' <<<"$out" || fail "layer4.1.conv1 not at 2x2"
grep -q 'not run' <<<"$out" && fail "a row was not run"
rows=$(grep -cE ' (fprop|dgrad|wgrad) +[0-9.]+ +[0-9.]+ +[0-9.]+$' <<<"$out")
# 19 convs x 3 ops after the stem, plus 2 ops for each of the 2 stem paddings.
((rows == 19 * 3 + 4)) || fail "$rows timed rows, want $((19 * 3 + 4))"
result=$(grep '^RESULT ' <<<"$out") || fail "no RESULT line"
/usr/bin/python3 - "${result#RESULT }" <<'PYEOF' || fail "bad RESULT: $result"
import json, sys
r = json.loads(sys.argv[1])
# The totals count the stem once (at 8 channels): 19 x 3 + 2 rows.
assert r["convs"] == 59 and r["amp"] == "bf16" and r["batch"] == 2 and r["size"] == 64, r
assert r["heuristic_ms"] > 0 and r["autotuned_ms"] > 0 and 0 < r["stem_heuristic_ms"] < r["heuristic_ms"], r
PYEOF
echo "conv_bench_smoke: ok"
