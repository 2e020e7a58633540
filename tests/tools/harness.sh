# shellcheck shell=bash
# What the script tests in tests/tools share (sourced): a scratch folder removed on exit ($TMP), and
# PASS/FAIL lines counted in $FAILS (each script exits non-zero when FAILS > 0).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() {  # check DESCRIPTION CMD...
  local d=$1; shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}
