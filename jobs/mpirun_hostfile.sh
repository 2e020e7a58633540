#!/usr/bin/env bash
# Plain Open MPI launch across hosts listed in a hostfile (one line per host: "host slots=GPUS"; a
# host on two lines is refused where either sets slots= or max_slots=, before anything starts).
#   jobs/mpirun_hostfile.sh hosts 2 --data /data/shards --epochs 16
# Arguments: HOSTFILE NP [train_resnet18 flags...]; the flags go through as given (the script adds
# none of its own, so none can clash with them). Every host needs the same build at the same path
# and its own shards under --data. SIGUSR1 to mpirun is forwarded to the ranks: they checkpoint at
# the next step and exit 0. Every exported NCCL_*, DDP_*, OMP_* and OPENBLAS_* variable goes to every
# rank (-x), and
# ssh gets a 30 s connect timeout and no prompts (below: how to override).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 HOSTFILE NP [train_resnet18 flags...]" >&2; exit 2; }
HOSTFILE=$1 NP=$2
shift 2
# Checked here: mpirun answers a directory with "input in flex scanner failed", and -np 0 with one
# rank per slot.
[[ -f $HOSTFILE && -r $HOSTFILE ]] || { echo "$0: hostfile '$HOSTFILE' is not a readable file" >&2; exit 2; }
# Windows line endings: Open MPI stops at "parse error ... line 1 token 1", not naming the \r.
crlf=$(awk '/\r/ { print FNR; exit }' "$HOSTFILE")
if [[ -n $crlf ]]; then
  printf '%s\n' "$0: hostfile '$HOSTFILE' has Windows line endings (\\r, first on line $crlf), which Open MPI cannot parse: convert it (dos2unix '$HOSTFILE', or sed -i 's/\\r\$//' '$HOSTFILE')" >&2
  exit 2
fi
grep -qvE '^[[:space:]]*(#|$)' "$HOSTFILE" || { echo "$0: hostfile '$HOSTFILE' lists no hosts" >&2; exit 2; }
# Open MPI takes a host on several lines only as one line per slot (bare names); a host named again
# where one of its lines sets slots= or max_slots= ends mpirun with "An internal error has occurred
# in ORTE". Host names compare without case and without a user@ prefix, as Open MPI's do.
dup=$(awk '
  { sub(/#.*/, "") }
  NF == 0 { next }
  { h = tolower($1); sub(/^[^@]*@/, "", h) }
  h in first {
    if (NF > 1 || set[h]) { printf "%s %d %s %d", name[h], first[h], $1, FNR; exit }
    next
  }
  { first[h] = FNR; name[h] = $1; set[h] = NF > 1 }
' "$HOSTFILE")
if [[ -n $dup ]]; then
  read -r host line1 again line2 <<<"$dup"
  if [[ $again == "$host" ]]; then again=""; else again=" (as '$again' there; names ignore case and user@)"; fi
  echo "$0: hostfile '$HOSTFILE' names host '$host' on lines $line1 and $line2$again: give each host one line with slots=N" >&2
  exit 2
fi
[[ $NP =~ ^[1-9][0-9]*$ ]] || { echo "$0: NP must be a positive number of ranks, got '$NP'" >&2; exit 2; }
# Ranks fill each host's slots in order; DDP_PER_NODE=k places exactly k per host instead (mpirun
# --map-by ppr:k:node, which answers a bad k with an unclear "ppr" error).
if [[ -n ${DDP_PER_NODE:-} && ! $DDP_PER_NODE =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: DDP_PER_NODE must be a positive whole number of ranks per host, got '$DDP_PER_NODE'" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN=${TRAIN:-$ROOT/build/src/apps/train_resnet18}
extra=()
[[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
# -x of an unset variable makes mpirun warn 'could not find environment variable'.
[[ -n ${LD_LIBRARY_PATH+set} ]] && extra+=(-x LD_LIBRARY_PATH)
# TCP interface for MPI's own traffic (bootstrap, small reductions); NCCL picks its own
# (NCCL_SOCKET_IFNAME to force one). Set DDP_IFACE=eth0 etc. when hosts have several networks: it
# sets NCCL_SOCKET_IFNAME too, unless that is set (not empty) already.
own=" DDP_IFACE DDP_PER_NODE "             # this script's own variables, not the trainer's
if [[ -n ${DDP_IFACE:-} ]]; then
  extra+=(--mca btl_tcp_if_include "$DDP_IFACE" --mca oob_tcp_if_include "$DDP_IFACE")
  if [[ -z ${NCCL_SOCKET_IFNAME:-} ]]; then
    extra+=(-x NCCL_SOCKET_IFNAME="$DDP_IFACE")
    own+="NCCL_SOCKET_IFNAME "
  fi
fi
# The ranks on the other hosts start in the clean environment of the launcher (ssh), not in this
# shell's: every exported NCCL_* (NCCL_DEBUG, NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) and DDP_*
# variable (train_resnet18 reads DDP_LOG_LEVEL, DDP_MPI_PROGRESS_THREAD, DDP_CUDNN_AUTOTUNE,
# DDP_CPU_NO_AVX512), and the CPU thread settings OMP_* and OPENBLAS_* (OMP_NUM_THREADS,
# OPENBLAS_CORETYPE, ...), go to every rank with -x. Not CUDA_VISIBLE_DEVICES: GPU numbering is the
# host's own (each rank picks its GPU by its local rank). Others: OMPI_MCA_mca_base_env_list='A;B=v'.
while read -r name; do
  case $name in NCCL_* | DDP_* | OMP_* | OPENBLAS_*) [[ $own == *" $name "* ]] || extra+=(-x "$name") ;; esac
done < <(compgen -e)
# mpirun starts its daemon on every other host before any rank starts; a host whose ssh never
# answers (a dropped connection, a password or host-key prompt) hangs mpirun there, out of reach of
# train_resnet18's --timeout. Where Open MPI launches with ssh (its default plm_rsh_agent "ssh : rsh",
# the first found on PATH) and plm_rsh_args is not set (OMPI_MCA_plm_rsh_args, an mca-params.conf),
# ssh gets -o ConnectTimeout=30 -o BatchMode=yes: such a host fails the launch within 30 s. Setting
# OMPI_MCA_plm_rsh_args replaces them (even empty: ssh's own defaults); ompi_info tells what is set.
rsh_info=""
command -v ompi_info >/dev/null && rsh_info=$(ompi_info --parsable --level 9 --param plm rsh 2>/dev/null || true)
agent=$(sed -n 's/^mca:plm:rsh:param:plm_rsh_agent:value://p' <<<"$rsh_info")
rsh_args_from=$(sed -n 's/^mca:plm:rsh:param:plm_rsh_args:source://p' <<<"$rsh_info")
agent=${agent#\"} agent=${agent%\"} launcher=""
IFS=: read -r -a agents <<<"$agent"
for a in ${agents[@]+"${agents[@]}"}; do
  read -r a _ <<<"$a"
  if [[ -n $a ]] && command -v "$a" >/dev/null; then launcher=$a; break; fi
done
if [[ ${launcher##*/} == ssh && $rsh_args_from == default ]]; then
  extra+=(--mca plm_rsh_args "-o ConnectTimeout=30 -o BatchMode=yes")
fi
[[ -n ${DDP_PER_NODE:-} ]] && extra+=(--map-by "ppr:${DDP_PER_NODE}:node")
exec mpirun --hostfile "$HOSTFILE" -np "$NP" --bind-to none \
  -x PATH "${extra[@]}" "$TRAIN" "$@"
