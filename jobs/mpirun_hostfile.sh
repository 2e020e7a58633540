#!/usr/bin/env bash
# Plain Open MPI launch across hosts listed in a hostfile (one line per host: "host slots=GPUS").
#   jobs/mpirun_hostfile.sh hosts 2 --data /data/shards --epochs 16
# Arguments: HOSTFILE NP [train_resnet18 flags...]; the flags go through as given (the script adds
# none of its own, so none can clash with them). Every host needs the same build at the same path
# and its own shards under --data. SIGUSR1 to mpirun is forwarded to the ranks: they checkpoint at
# the next step and exit 0.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 HOSTFILE NP [train_resnet18 flags...]" >&2; exit 2; }
HOSTFILE=$1 NP=$2
shift 2
# Checked here: mpirun answers a directory with "input in flex scanner failed", and -np 0 with one
# rank per slot.
[[ -f $HOSTFILE && -r $HOSTFILE ]] || { echo "$0: hostfile '$HOSTFILE' is not a readable file" >&2; exit 2; }
grep -qvE '^[[:space:]]*(#|$)' "$HOSTFILE" || { echo "$0: hostfile '$HOSTFILE' lists no hosts" >&2; exit 2; }
[[ $NP =~ ^[1-9][0-9]*$ ]] || { echo "$0: NP must be a positive number of ranks, got '$NP'" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN=${TRAIN:-$ROOT/build/src/apps/train_resnet18}
extra=()
[[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
# -x of an unset variable makes mpirun warn 'could not find environment variable'.
[[ -n ${LD_LIBRARY_PATH+set} ]] && extra+=(-x LD_LIBRARY_PATH)
# TCP interface for MPI's own traffic (bootstrap, small reductions); NCCL picks its own
# (NCCL_SOCKET_IFNAME to force one). Set DDP_IFACE=eth0 etc. when hosts have several networks.
if [[ -n ${DDP_IFACE:-} ]]; then
  extra+=(--mca btl_tcp_if_include "$DDP_IFACE" --mca oob_tcp_if_include "$DDP_IFACE" -x NCCL_SOCKET_IFNAME="$DDP_IFACE")
fi
# Ranks fill each host's slots in order; DDP_PER_NODE=k places exactly k per host instead.
[[ -n ${DDP_PER_NODE:-} ]] && extra+=(--map-by "ppr:${DDP_PER_NODE}:node")
exec mpirun --hostfile "$HOSTFILE" -np "$NP" --bind-to none \
  -x PATH "${extra[@]}" "$TRAIN" "$@"
