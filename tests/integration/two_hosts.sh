#!/bin/bash
# Runs an MPI program on two "hosts": two network namespaces joined by a veth pair (198.18.0.0/24,
# the range reserved for network tests), one rank in each, TCP between them, launched by
# `mpirun --hostfile` with an rsh agent that enters the namespace of the address it is given.
#
#   two_hosts.sh [--np-per-host N|N,M] [--rate 10gbit] [--mpirun PATH] -- PROGRAM ARGS...
#
# --np-per-host N,M runs N ranks on the first host and M on the second (uneven nodes); ranks 0..N-1
# are the first host's.
# --rate limits the link in both directions with tc tbf. Needs root and `ip netns`; exits 77
# (CTest SKIP_RETURN_CODE) with the reason when namespaces cannot be made. Always cleans up.
# Both namespaces share this machine's hostname, which Open MPI takes for one node: fine with one rank
# per host, but with more MPI_Comm_split_type(SHARED) disagrees between ranks and the job crashes in
# MPI_Comm_split. So more than one rank on a host starts the second host's side in a UTS namespace of
# its own, named after its network namespace (needs `unshare --uts`; exit 77 without it).
set -u
per_host=1
rate=""
mpiexec=$(command -v mpirun || true)
while [ $# -gt 0 ]; do
  case "$1" in
    --np-per-host) per_host=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
    --rate) rate=$2; shift 2 ;;
    --mpirun) mpiexec=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "two_hosts.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "two_hosts.sh: no program given (two_hosts.sh [options] -- PROGRAM ARGS)" >&2; exit 2; }
[ -n "$mpiexec" ] || { echo "two_hosts.sh: mpirun not found" >&2; exit 2; }
# N or N,M: ranks on the first host and on the second.
per1=${per_host%%,*} per2=${per_host#*,}
for n in "$per1" "$per2"; do
  case "$n" in
    "" | *[!0-9]* | 0*)
      echo "two_hosts.sh: --np-per-host must be a positive whole number, got '$per_host' (N, or N,M: ranks on the first and on the second host)" >&2
      exit 2 ;;
  esac
done
most=$((per1 > per2 ? per1 : per2))

skip() { echo "SKIP: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "two-host test needs root to create network namespaces"
command -v ip >/dev/null || skip "the ip command (iproute2) is not installed"

tag=$$
ns1=ddpA$tag ns2=ddpB$tag
if1=dva$tag if2=dvb$tag
a1=198.18.0.1 a2=198.18.0.2 net=198.18.0.0/24
work=$(mktemp -d /tmp/ddp_two_hosts.XXXXXX)

mpid=""
cleanup() {
  [ -n "$mpid" ] && kill -9 "$mpid" 2>/dev/null
  ip netns pids "$ns1" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns pids "$ns2" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns del "$ns1" 2>/dev/null
  ip netns del "$ns2" 2>/dev/null
  ip link del "$if1" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$ns1" 2>"$work/err" || skip "cannot create a network namespace: $(cat "$work/err")"
ip netns add "$ns2" || skip "cannot create a second network namespace"
ip link add "$if1" type veth peer name "$if2" 2>"$work/err" || skip "cannot create a veth pair: $(cat "$work/err")"
ip link set "$if1" netns "$ns1" && ip link set "$if2" netns "$ns2" || skip "cannot move the veth ends into the namespaces"
ip -n "$ns1" addr add "$a1/24" dev "$if1" && ip -n "$ns2" addr add "$a2/24" dev "$if2" || skip "cannot add addresses"
for n in "$ns1:$if1" "$ns2:$if2"; do
  ip -n "${n%%:*}" link set lo up && ip -n "${n%%:*}" link set "${n##*:}" up || skip "cannot bring links up"
done
if [ -n "$rate" ]; then
  command -v tc >/dev/null || skip "tc not installed, cannot limit the link to $rate"
  for n in "$ns1:$if1" "$ns2:$if2"; do
    ip netns exec "${n%%:*}" tc qdisc add dev "${n##*:}" root tbf rate "$rate" burst 4mb latency 50ms \
      || skip "cannot add a tbf qdisc of $rate"
  done
fi
# Reachability without ping (often not installed): a TCP connect to a closed port is refused at once.
probe=$(ip netns exec "$ns1" timeout 5 bash -c "echo > /dev/tcp/$a2/9" 2>&1)
case "$probe" in
  *refused*|"") ;;
  *) skip "the two namespaces cannot reach each other: $probe" ;;
esac

# The agent runs the launcher's command in the namespace; with more than one rank per host, also under
# a hostname of its own (see the top).
# shellcheck disable=SC2016  # expanded in the agent, not here
run='/bin/bash -c "$*"'
if [ "$most" -gt 1 ]; then
  unshare --uts hostname ddp-uts-check 2>"$work/err" \
    || skip "--np-per-host $per_host needs each host's own hostname (unshare --uts): $(cat "$work/err")"
  # shellcheck disable=SC2016
  run='unshare --uts /bin/bash -c "hostname $ns && $*"'
fi
cat > "$work/agent" <<AGENT
#!/bin/bash
# rsh agent: "agent HOST COMMAND..." runs COMMAND in the namespace that owns HOST's address.
host=\$1; shift
case "\$host" in
  $a1) ns=$ns1 ;;
  $a2) ns=$ns2 ;;
  *) echo "rsh agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" $run
AGENT
chmod +x "$work/agent"
printf '%s slots=%s\n%s slots=%s\n' "$a1" "$per1" "$a2" "$per2" > "$work/hosts"

# TWO_HOSTS_INFO=FILE: tell a test which namespaces and links were made (fault injection).
[ -n "${TWO_HOSTS_INFO:-}" ] && printf 'ns1=%s\nns2=%s\nif1=%s\nif2=%s\n' "$ns1" "$ns2" "$if1" "$if2" > "$TWO_HOSTS_INFO"
np=$((per1 + per2))
uts=""; [ "$most" -gt 1 ] && uts=", hostname $ns2"
echo "two_hosts: $np ranks, $per1 on $a1 ($ns1) and $per2 on $a2 ($ns2$uts)${rate:+, link limited to $rate}" >&2
# In the background, so that a TERM from a test harness runs the cleanup trap at once instead of
# after mpirun (which may hang when a host became unreachable).
ip netns exec "$ns1" "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -np "$np" --hostfile "$work/hosts" \
  --mca plm_rsh_agent "$work/agent" --mca btl tcp,self --mca btl_tcp_if_include "$net" \
  --mca oob_tcp_if_include "$net" "$@" &
mpid=$!
wait $mpid
rc=$?
mpid=""
exit $rc
