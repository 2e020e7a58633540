#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted bash -c bodies: meant as written
# The job scripts in jobs/ without a cluster: shellcheck; mpirun_hostfile.sh's argument checks and the
# mpirun command it builds (a stand-in mpirun on PATH prints its arguments), then one real mpirun of
# /bin/true where Open MPI is installed, and (through a pretend rsh agent and a stand-in ssh) what
# reaches a rank on another host and what ssh is given; tests/integration/two_hosts.sh's
# --np-per-host; the sbatch scripts run outside Slurm (a clear message, exit 2) and inside a pretend
# job (a stand-in srun). A real Slurm runs them in tests/integration/slurm_train.sh.
# Usage: tests/tools/test_jobs.sh
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=harness.sh
source "$ROOT/tests/tools/harness.sh"

if command -v shellcheck >/dev/null; then
  check "shellcheck jobs/*, this test" shellcheck -x "$ROOT"/jobs/* "$ROOT/tests/tools/test_jobs.sh"
else
  fail "shellcheck not installed (tools/setup installs it)"
fi

# ---- mpirun_hostfile.sh ---------------------------------------------------------------------------
MPH=$ROOT/jobs/mpirun_hostfile.sh
mkdir -p "$TMP/bin" "$TMP/hostdir"
printf '#!/bin/bash\nprintf "%%s\\n" "$@" >"%s/mpirun.args"\n' "$TMP" >"$TMP/bin/mpirun"
chmod +x "$TMP/bin/mpirun"
printf 'localhost slots=2\n' >"$TMP/hosts"
printf '# no hosts yet\n\n' >"$TMP/nohosts"
# runs mpirun_hostfile.sh with the stand-in mpirun; sets $rc and $out
fake_run() { out=$(PATH="$TMP/bin:$PATH" "$MPH" "$@" 2>&1); rc=$?; }
args() { tr '\n' ' ' <"$TMP/mpirun.args"; }

for bad in "$TMP/hostdir" "$TMP/missing"; do
  rm -f "$TMP/mpirun.args"
  fake_run "$bad" 2
  check "hostfile $(basename "$bad"): exit 2, named, mpirun not started" \
    bash -c '[[ $1 -eq 2 && $2 == *"hostfile '\''$3'\'' is not a readable file"* && ! -e $4 ]]' _ "$rc" "$out" "$bad" "$TMP/mpirun.args"
done
fake_run "$TMP/nohosts" 2
check "hostfile without hosts: exit 2" bash -c '[[ $1 -eq 2 && $2 == *"lists no hosts"* ]]' _ "$rc" "$out"
# A host named twice with a slot count: Open MPI's "internal error". Named with both lines (comments and
# blank lines counted, as an editor does), case and user@ ignored, before mpirun starts.
printf '# two nodes\nnode1 slots=2\n\nnode2 slots=2\nNODE1 slots=2  # again\n' >"$TMP/dup_slots"
printf 'node1\nnode1\nalice@node1 max_slots=4\n' >"$TMP/dup_mixed"
for dup in "dup_slots|names host 'node1' on lines 2 and 5 (as 'NODE1' there;" "dup_mixed|names host 'node1' on lines 1 and 3 (as 'alice@node1' there;"; do
  f=${dup%%|*} want=${dup#*|}
  rm -f "$TMP/mpirun.args"
  fake_run "$TMP/$f" 2
  check "hostfile $f: exit 2, mpirun not started: hostfile '$f' $want ...: give each host one line with slots=N" \
    bash -c '[[ $1 -eq 2 && $2 == *"hostfile '\''$3'\'' $4"*": give each host one line with slots=N"* && ! -e $5 ]]' \
    _ "$rc" "$out" "$TMP/$f" "$want" "$TMP/mpirun.args"
done
printf 'node1 slots=1\nnode2 slots=1\nnode1 slots=1\n' >"$TMP/dup_same"
fake_run "$TMP/dup_same" 2
check "hostfile dup_same: the same spelling twice is named once, without an 'as' note" \
  bash -c '[[ $1 -eq 2 && $2 == *"names host '\''node1'\'' on lines 1 and 3: give each host"* ]]' _ "$rc" "$out"
# Open MPI's other form, one line per slot without slots=, works (a scheduler's node list looks so).
printf 'node1\nnode1\nnode2 slots=1\n' >"$TMP/per_slot"
fake_run "$TMP/per_slot" 3
check "hostfile with one line per slot (no slots=): accepted" bash -c '[[ $1 -eq 0 ]]' _ "$rc"
for np in 0 -1 abc 2x ""; do
  rm -f "$TMP/mpirun.args"
  fake_run "$TMP/hosts" "$np"
  check "NP '$np': exit 2, named, mpirun not started" \
    bash -c '[[ $1 -eq 2 && $2 == *"NP must be a positive number of ranks, got '\''$3'\''"* && ! -e $4 ]]' _ "$rc" "$out" "$np" "$TMP/mpirun.args"
done
# Windows line endings: Open MPI's "parse error ... line 1 token 1" does not name the \r.
printf 'node1 slots=1\nnode2 slots=1\r\n' >"$TMP/crlf_hosts"
rm -f "$TMP/mpirun.args"
fake_run "$TMP/crlf_hosts" 2
check "hostfile with CRLF line endings: exit 2, says so (first on line 2) and how to convert, mpirun not started" \
  bash -c '[[ $1 -eq 2 && $2 == *"has Windows line endings (\r, first on line 2)"*"dos2unix"* && ! -e $3 ]]' _ "$rc" "$out" "$TMP/mpirun.args"
# DDP_PER_NODE=k: --map-by ppr:k:node; anything but a positive whole number gets mpirun's unclear "ppr" error.
for k in abc 0 -1 1.5; do
  rm -f "$TMP/mpirun.args"
  DDP_PER_NODE=$k fake_run "$TMP/hosts" 2
  check "DDP_PER_NODE='$k': exit 2, named, mpirun not started" \
    bash -c '[[ $1 -eq 2 && $2 == *"DDP_PER_NODE must be a positive whole number of ranks per host, got '\''$3'\''"* && ! -e $4 ]]' _ "$rc" "$out" "$k" "$TMP/mpirun.args"
done
DDP_PER_NODE=2 fake_run "$TMP/hosts" 2
check "DDP_PER_NODE=2: --map-by ppr:2:node" bash -c '[[ $1 -eq 0 && $2 == *"--map-by ppr:2:node "* ]]' _ "$rc" "$(args)"
fake_run "$TMP/hosts" 2 --epochs 3 --workers=2 --progress bar
check "good arguments: mpirun --hostfile HOSTS -np 2 ... TRAIN and the user's flags as given, nothing added" \
  bash -c '[[ $1 -eq 0 && $2 == "--hostfile $3 -np 2 "*"train_resnet18 --epochs 3 --workers=2 --progress bar " ]]' _ "$rc" "$(args)" "$TMP/hosts"
(unset LD_LIBRARY_PATH; fake_run "$TMP/hosts" 2; exit "$rc")
check "LD_LIBRARY_PATH unset: not passed with -x (mpirun would warn)" bash -c '[[ $1 != *LD_LIBRARY_PATH* ]]' _ "$(args)"
LD_LIBRARY_PATH=/opt/x fake_run "$TMP/hosts" 2
check "LD_LIBRARY_PATH set: passed with -x" bash -c '[[ $1 == *"-x LD_LIBRARY_PATH "* ]]' _ "$(args)"
# ssh starts the ranks on the other hosts in a clean environment: every exported NCCL_* and DDP_*
# variable goes with -x (DDP_IFACE and DDP_PER_NODE are the script's own, not the trainer's).
NCCL_DEBUG=INFO NCCL_IB_HCA=mlx5 DDP_LOG_LEVEL=debug DDP_MPI_PROGRESS_THREAD=0 DDP_PER_NODE=1 OMP_NUM_THREADS=3 \
  OPENBLAS_CORETYPE=Haswell CUDA_VISIBLE_DEVICES=1 fake_run "$TMP/hosts" 2
check "NCCL_DEBUG, NCCL_IB_HCA, DDP_LOG_LEVEL, DDP_MPI_PROGRESS_THREAD, OMP_NUM_THREADS, OPENBLAS_CORETYPE set: each passed with -x; DDP_PER_NODE and CUDA_VISIBLE_DEVICES not" \
  bash -c 'for v in NCCL_DEBUG NCCL_IB_HCA DDP_LOG_LEVEL DDP_MPI_PROGRESS_THREAD OMP_NUM_THREADS OPENBLAS_CORETYPE; do [[ " $1" == *" -x $v "* ]] || exit 1; done; [[ $1 != *DDP_PER_NODE* && $1 != *CUDA_VISIBLE_DEVICES* ]]' _ "$(args)"
(unset NCCL_SOCKET_IFNAME; DDP_IFACE=eth9 fake_run "$TMP/hosts" 2; exit "$rc")
check "DDP_IFACE=eth9: MPI's TCP interfaces and -x NCCL_SOCKET_IFNAME=eth9; DDP_IFACE itself not passed" \
  bash -c '[[ $1 == *"--mca btl_tcp_if_include eth9 --mca oob_tcp_if_include eth9 "* && $1 == *"-x NCCL_SOCKET_IFNAME=eth9 "* && $1 != *DDP_IFACE* ]]' _ "$(args)"
NCCL_SOCKET_IFNAME=ib0 DDP_IFACE=eth9 fake_run "$TMP/hosts" 2
check "NCCL_SOCKET_IFNAME=ib0 and DDP_IFACE=eth9: the user's NCCL_SOCKET_IFNAME goes to the ranks (once), MPI's interface is eth9" \
  bash -c '[[ $1 == *"-x NCCL_SOCKET_IFNAME "* && $(grep -c NCCL_SOCKET_IFNAME "$2") -eq 1 && $1 == *"btl_tcp_if_include eth9 "* ]]' _ "$(args)" "$TMP/mpirun.args"
# A host whose ssh never answers would hang mpirun before any rank starts: where Open MPI launches with
# ssh (plm_rsh_agent, the first found on PATH) and plm_rsh_args is not set, ssh gets a connect timeout
# and no prompts. A stand-in ompi_info says what is set (nothing, as Open MPI 5's, with FAKE_NO_RSH).
cat >"$TMP/bin/ompi_info" <<'OMPI_INFO'
#!/bin/bash
[[ -n ${FAKE_NO_RSH:-} ]] && exit 0
echo "mca:plm:rsh:param:plm_rsh_agent:value:${FAKE_RSH_AGENT-\"ssh : rsh\"}"
echo "mca:plm:rsh:param:plm_rsh_args:value:"
echo "mca:plm:rsh:param:plm_rsh_args:source:${FAKE_RSH_ARGS_FROM:-default}"
OMPI_INFO
printf '#!/bin/bash\nexit 255\n' >"$TMP/bin/ssh"
chmod +x "$TMP/bin/ompi_info" "$TMP/bin/ssh"
ssh_opts() { grep -qxF -- "-o ConnectTimeout=30 -o BatchMode=yes" "$TMP/mpirun.args" && grep -qxF plm_rsh_args "$TMP/mpirun.args"; }
fake_run "$TMP/hosts" 2
check "launcher ssh (Open MPI's default agent), plm_rsh_args not set: --mca plm_rsh_args '-o ConnectTimeout=30 -o BatchMode=yes'" ssh_opts
FAKE_RSH_ARGS_FROM=environment fake_run "$TMP/hosts" 2
check "plm_rsh_args set by the user (OMPI_MCA_plm_rsh_args, even empty): the script adds none" eval '! ssh_opts'
FAKE_RSH_AGENT=/opt/my_agent fake_run "$TMP/hosts" 2
check "another plm_rsh_agent than ssh: no ssh options" eval '! ssh_opts'
FAKE_RSH_AGENT="/usr/local/bin/nosuch : ssh -x" fake_run "$TMP/hosts" 2
check "plm_rsh_agent 'missing : ssh -x': the first found on PATH is ssh, so the ssh options" ssh_opts
FAKE_NO_RSH=1 fake_run "$TMP/hosts" 2
check "no plm rsh parameters (Open MPI 5, or no ompi_info): no ssh options" eval '! ssh_opts'

# The real mpirun, running /bin/true on this host: no warning about an unset LD_LIBRARY_PATH.
if command -v mpirun >/dev/null; then
  out=$(env -u LD_LIBRARY_PATH TRAIN=/bin/true OMPI_MCA_btl_vader_single_copy_mechanism=none "$MPH" "$TMP/hosts" 2 2>&1); rc=$?
  check "real mpirun, LD_LIBRARY_PATH unset: exit 0, no environment-variable warning" \
    bash -c '[[ $1 -eq 0 && $2 != *"could not find environment variable"* ]]' _ "$rc" "$out" || printf '%s\n' "$out"
  # A rank on another host: a pretend rsh agent (OMPI_MCA_plm_rsh_agent) runs the launcher's command
  # in a clean environment, as ssh does; the rank (env) prints what reached it.
  cat >"$TMP/agent" <<'AGENT'
#!/bin/bash
shift
exec env -i PATH="$PATH" ${LD_LIBRARY_PATH+LD_LIBRARY_PATH="$LD_LIBRARY_PATH"} HOME="$HOME" /bin/bash -c "$*"
AGENT
  chmod +x "$TMP/agent"
  printf 'pretend1 slots=1\n' >"$TMP/remote_hosts"
  out=$(env TRAIN=/usr/bin/env OMPI_MCA_plm_rsh_agent="$TMP/agent" NCCL_DEBUG=INFO DDP_LOG_LEVEL=debug \
    timeout 60 "$MPH" "$TMP/remote_hosts" 1 2>&1); rc=$?
  check "real mpirun, a rank on another (pretend) host with a clean environment: NCCL_DEBUG and DDP_LOG_LEVEL reach it" \
    bash -c '[[ $1 -eq 0 && $2 == *"NCCL_DEBUG=INFO"* && $2 == *"DDP_LOG_LEVEL=debug"* ]]' _ "$rc" "$out" || printf '%s\n' "$out"
  # Open MPI's default agent finds a stand-in ssh first on PATH; it records its arguments and fails
  # as an unreachable host does. The launch fails at once and ssh got the options (or the user's).
  if command -v ompi_info >/dev/null; then
    mkdir -p "$TMP/sshbin"
    printf '#!/bin/bash\nprintf "%%s\\n" "$*" >>"%s/ssh.args"\nexit 255\n' "$TMP" >"$TMP/sshbin/ssh"
    chmod +x "$TMP/sshbin/ssh"
    for user_args in unset "-o Port=22"; do
      rm -f "$TMP/ssh.args"
      if [[ $user_args == unset ]]; then
        out=$(env -u OMPI_MCA_plm_rsh_args -u OMPI_MCA_plm_rsh_agent -u OMPI_MCA_orte_rsh_agent PATH="$TMP/sshbin:$PATH" \
          TRAIN=/bin/true timeout 60 "$MPH" "$TMP/remote_hosts" 1 2>&1); rc=$?
        check "real mpirun, ssh launch: ssh gets -o ConnectTimeout=30 -o BatchMode=yes; a failed ssh ends mpirun (exit non-zero)" \
          bash -c '[[ $1 -ne 0 && $1 -ne 124 && $(cat "$2") == *"-o ConnectTimeout=30 -o BatchMode=yes pretend1 "* ]]' _ "$rc" "$TMP/ssh.args" \
          || printf '%s\n' "$out"
      else
        out=$(env -u OMPI_MCA_plm_rsh_agent -u OMPI_MCA_orte_rsh_agent PATH="$TMP/sshbin:$PATH" OMPI_MCA_plm_rsh_args="$user_args" \
          TRAIN=/bin/true timeout 60 "$MPH" "$TMP/remote_hosts" 1 2>&1); rc=$?
        check "real mpirun, OMPI_MCA_plm_rsh_args='-o Port=22': ssh gets the user's options only" \
          bash -c '[[ $1 -ne 0 && $1 -ne 124 && $(cat "$2") == *"-o Port=22 pretend1 "* && $(cat "$2") != *ConnectTimeout* ]]' _ "$rc" "$TMP/ssh.args" \
          || printf '%s\n' "$out"
      fi
    done
  fi
else
  printf 'NOTE mpirun not installed: the real mpirun run of mpirun_hostfile.sh is skipped\n'
fi

# ---- tests/integration/two_hosts.sh (namespaces sharing a hostname) ---------------------------------
TWO=$ROOT/tests/integration/two_hosts.sh
for n in abc 0 "2,0" "1,x" "2," "1,2,3"; do
  rm -f "$TMP/mpirun.args"
  out=$("$TWO" --np-per-host "$n" --mpirun "$TMP/bin/mpirun" -- true 2>&1); rc=$?
  check "two_hosts.sh --np-per-host '$n': exit 2, named, mpirun not started" \
    bash -c '[[ $1 -eq 2 && $2 == *"--np-per-host must be a positive whole number, got '\''$3'\''"* && ! -e $4 ]]' _ "$rc" "$out" "$n" "$TMP/mpirun.args"
done
# Two ranks per namespace "host": the second host's ranks run under a hostname of their own (with the
# machine's hostname on both, Open MPI's MPI_Comm_split_type(SHARED) disagrees and MPI_Comm_split crashes).
if command -v mpirun >/dev/null; then
  out=$(timeout 120 "$TWO" --np-per-host 2 --mpirun "$(command -v mpirun)" -- hostname 2>"$TMP/two.err"); rc=$?
  if [[ $rc -eq 77 ]]; then
    printf 'NOTE two_hosts.sh --np-per-host 2 skipped: %s\n' "$(cat "$TMP/two.err")"
  else
    check "two_hosts.sh --np-per-host 2: 4 ranks, the two hosts' with two different hostnames" \
      bash -c '[[ $1 -eq 0 && $(wc -l <<<"$2") -eq 4 && $(sort -u <<<"$2" | wc -l) -eq 2 ]]' _ "$rc" "$out" || cat "$TMP/two.err"
    # Uneven hosts: two ranks on the first, one on the second (ranks 0 and 1 on the first).
    out=$(timeout 120 "$TWO" --np-per-host 2,1 --mpirun "$(command -v mpirun)" -- \
          bash -c 'echo "$OMPI_COMM_WORLD_RANK $(hostname)"' 2>"$TMP/two.err" | sort); rc=$?
    check "two_hosts.sh --np-per-host 2,1: 3 ranks, 0 and 1 on the first host, 2 on the second" \
      bash -c '[[ $1 -eq 0 && $(wc -l <<<"$2") -eq 3 && $(cut -d" " -f2 <<<"$2" | sort -u | wc -l) -eq 2 &&
                  $(sed -n 1p <<<"$2" | cut -d" " -f2) == $(sed -n 2p <<<"$2" | cut -d" " -f2) &&
                  $(sed -n 1p <<<"$2" | cut -d" " -f2) != $(sed -n 3p <<<"$2" | cut -d" " -f2) ]]' _ "$rc" "$out" ||
      { printf '%s\n' "$out"; cat "$TMP/two.err"; }
  fi
fi

# ---- the sbatch scripts ---------------------------------------------------------------------------
# The scripts check that train_resnet18 is there before srun: a stand-in at ROOT's build path.
mkdir -p "$TMP/build/src/apps" "$TMP/elsewhere" "$TMP/spool"
printf '#!/bin/sh\n' >"$TMP/build/src/apps/train_resnet18"
chmod +x "$TMP/build/src/apps/train_resnet18"
printf '#!/bin/bash\nprintf "%%s\\n" "$@" >"%s/srun.args"\n' "$TMP" >"$TMP/bin/srun"
chmod +x "$TMP/bin/srun"
for s in parallelcluster.sbatch slurm_train.sbatch; do  # slurm_train last: its srun.args are checked below
  out=$(env -u SLURM_JOB_ID -u SLURM_JOB_NAME bash "$ROOT/jobs/$s" 2>&1); rc=$?
  check "$s outside Slurm: exit 2, says to submit it with sbatch" \
    bash -c '[[ $1 -eq 2 && $2 == *"not inside a Slurm job: submit it with sbatch"* && $2 != *"unbound variable"* ]]' _ "$rc" "$out"
  rm -f "$TMP/srun.args"
  (cd "$TMP" && env PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=n1 \
    ROOT="$TMP" ARGS="--max-steps 5 --seed 3" bash "$ROOT/jobs/$s" --epochs 2 >/dev/null 2>&1); rc=$?
  check "$s in a (pretend) job: srun --mpi=pmix with the checkpoint dir and the extra flags" \
    bash -c '[[ $1 -eq 0 && $(tr "\n" " " <"$2") == "--mpi=pmix "*"--checkpoint-dir "*"/checkpoints/job "*"--epochs 2 " ]]' _ "$rc" "$TMP/srun.args"
done
check "slurm_train.sbatch: ARGS split into separate flags" \
  bash -c '[[ $(tr "\n" " " <"$1") == *" --max-steps 5 --seed 3 --epochs 2 " ]]' _ "$TMP/srun.args"
# Without ROOT, slurm_train.sbatch's repository is the submit directory: submitted from elsewhere.
rm -f "$TMP/srun.args"
out=$(cd "$TMP" && env -u ROOT -u TRAIN PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=n1 \
  SLURM_SUBMIT_DIR="$TMP/elsewhere" bash "$ROOT/jobs/slurm_train.sbatch" 2>&1); rc=$?
check "slurm_train.sbatch submitted outside the repository: exit 2 before srun, says to submit from the repository or set ROOT/TRAIN" \
  bash -c '[[ $1 -eq 2 && $2 == *"(ROOT=$3; ROOT defaults to the directory sbatch was run from): submit from the repository"* && ! -e $4 ]]' \
  _ "$rc" "$out" "$TMP/elsewhere" "$TMP/srun.args"

# The user's flags override the script's own (train_resnet18 refuses a flag given twice): on the
# command line as "--FLAG VALUE" or "--FLAG=VALUE", in ARGS (slurm_train.sbatch), or in a --config file.
# once FLAG VALUE: FLAG is in the srun arguments exactly once, with VALUE (either form).
once() {
  local a=$TMP/srun.args
  [[ $(grep -cE -- "^$1(=|\$)" "$a") -eq 1 ]] || return 1
  grep -qxF -- "$1=$2" "$a" || [[ $(grep -xF -A1 -- "$1" "$a" | sed -n 2p) == "$2" ]]
}
absent() { ! grep -qE -- "^$1(=|\$)" "$TMP/srun.args"; }
printf 'jsonl = /cfg/metrics.jsonl\n# tensorboard = /not/this\n  checkpoint-dir=/cfg/ck\n' >"$TMP/cfg.ini"
pretend_job() {  # pretend_job SCRIPT ARGS_VALUE FLAGS...: runs it with the stand-in srun; sets $rc
  local s=$1 a=$2; shift 2
  rm -f "$TMP/srun.args"
  (cd "$TMP" && env PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=n1 \
    SLURM_CPUS_PER_TASK=8 ROOT="$TMP" ARGS="$a" bash "$ROOT/jobs/$s" "$@" >/dev/null 2>&1); rc=$?
}
pretend_job slurm_train.sbatch "--keep-checkpoints 7 --resume=/r/ckpt.h5" \
  --workers 2 --progress=bar --data /d --config "$TMP/cfg.ini"
check "slurm_train.sbatch: the user's --workers 2, --progress=bar, --data, ARGS' --keep-checkpoints 7 and --resume=FILE replace the script's, once each" \
  eval '[[ $rc -eq 0 ]] && once --workers 2 && once --progress bar && once --data /d && once --keep-checkpoints 7 && once --resume /r/ckpt.h5'
check "slurm_train.sbatch: --jsonl and --checkpoint-dir set in the --config file are not passed (they would win over it)" \
  eval 'absent --jsonl && absent --checkpoint-dir && once --config "$TMP/cfg.ini"'
check "slurm_train.sbatch: a flag the user did not set keeps the script's value (--tensorboard; a commented-out config line is not a setting)" \
  once --tensorboard "$TMP/runs/job/tb"
pretend_job parallelcluster.sbatch "" --shard-scope=global --workers=3 --resume /r/ckpt.h5 --config="$TMP/cfg.ini" --progress bar
check "parallelcluster.sbatch: the user's --shard-scope=global, --workers=3, --resume FILE, --progress bar replace the script's, once each" \
  eval '[[ $rc -eq 0 ]] && once --shard-scope global && once --workers 3 && once --resume /r/ckpt.h5 && once --progress bar'
check "parallelcluster.sbatch: --config's --jsonl and --checkpoint-dir not passed; --data and --tensorboard keep the script's" \
  eval 'absent --jsonl && absent --checkpoint-dir && once --data /scratch/imagenet-shards && once --tensorboard /shared/runs/job/tb'

# A signal to the batch shell reaches srun as SIGUSR1 (a checkpoint), and the job ends with srun's status.
cat >"$TMP/bin/srun" <<SRUN
#!/bin/bash
trap 'echo USR1 >"$TMP/srun.sig"; exit \${SRUN_RC:-0}' USR1
: >"$TMP/srun.started"
for _ in \$(seq 1 200); do sleep 0.05; done
exit 9
SRUN
for s in parallelcluster.sbatch slurm_train.sbatch; do
  for sig in USR1 TERM; do
    rm -f "$TMP/srun.sig" "$TMP/srun.started"
    (cd "$TMP" && exec env PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job SLURM_JOB_NUM_NODES=1 \
      SLURM_JOB_NODELIST=n1 ROOT="$TMP" SRUN_RC=3 bash "$ROOT/jobs/$s" >/dev/null 2>&1) &
    job=$!
    for _ in $(seq 1 100); do [[ -f $TMP/srun.started ]] && break; sleep 0.05; done
    kill -"$sig" "$job"
    rc=0; wait "$job" || rc=$?
    check "$s: SIG$sig to the batch shell reaches srun as SIGUSR1, the job ends with srun's status (3)" \
      bash -c '[[ $1 -eq 3 && $(cat "$2" 2>/dev/null) == USR1 ]]' _ "$rc" "$TMP/srun.sig"
  done
done

# Requeue after the time-limit signal (SIGUSR1 to the batch shell). The stand-in srun writes
# FAKE_STATUS (the trainer's --status-file) when signalled (FAKE_STOP_S seconds later), or at once
# with FAKE_NOWAIT=1, and exits SRUN_RC; a stand-in scontrol records its arguments and exits SCONTROL_RC.
cat >"$TMP/bin/srun" <<SRUN
#!/bin/bash
status=""
while ((\$#)); do [[ \$1 == --status-file ]] && status=\$2; shift; done
finish() { sleep \${FAKE_STOP_S:-0}; mkdir -p "\$(dirname "\$status")"; printf '%b' "\$FAKE_STATUS" >"\$status"; exit \${SRUN_RC:-0}; }
trap finish USR1
: >"$TMP/srun.started"
[[ -n \${FAKE_NOWAIT:-} ]] && finish
for _ in \$(seq 1 200); do sleep 0.05; done
exit 9
SRUN
cat >"$TMP/bin/scontrol" <<SCONTROL
#!/bin/bash
printf '%s\n' "\$*" >>"$TMP/scontrol.args"
[[ \${SCONTROL_RC:-0} -eq 0 ]] || echo "Requested operation is presently disabled for job 42" >&2
exit \${SCONTROL_RC:-0}
SCONTROL
chmod +x "$TMP/bin/scontrol"
STOPPED='state=stopped\nsignal=SIGUSR1\nstart_step=4\nglobal_step=9\nepoch=3\nstep_in_epoch=1\ncheckpoint=/c/ckpt-9.h5\n'
# requeue_job SCRIPT SIGNAL|USR1+TERM|- [VAR=VALUE...] [-- SCRIPT_ARGS...]: runs it in a pretend job,
# sends SIGNAL once srun runs; sets $rc and $out; $TMP/scontrol.args holds what scontrol was asked
requeue_job() {
  local s=$1 sig=$2; shift 2
  local vars=() sargs=()
  while (($#)); do
    if [[ $1 == -- ]]; then shift; sargs=("$@"); break; fi
    vars+=("$1"); shift
  done
  rm -f "$TMP/srun.started" "$TMP/scontrol.args" "$TMP/out"
  (cd "$TMP" && exec env PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job SLURM_JOB_NUM_NODES=1 \
    SLURM_JOB_NODELIST=n1 ROOT="$TMP" LOGS="$TMP/runs/job" FAKE_STATUS="$STOPPED" ${vars[@]+"${vars[@]}"} \
    bash "$ROOT/jobs/$s" ${sargs[@]+"${sargs[@]}"} >"$TMP/out" 2>&1) &
  local job=$!
  # until srun runs, or the script has ended without it (a refusal before srun)
  for _ in $(seq 1 100); do [[ -f $TMP/srun.started ]] && break; kill -0 "$job" 2>/dev/null || break; sleep 0.05; done
  if [[ $sig == USR1+TERM ]]; then
    kill -USR1 "$job" && sleep 0.3 && kill -TERM "$job"  # while the stop is still under way (FAKE_STOP_S)
  elif [[ $sig != - ]]; then
    kill -"$sig" "$job"
  fi
  rc=0; wait "$job" || rc=$?
  out=$(cat "$TMP/out")
}
requeued() { [[ $(cat "$TMP/scontrol.args" 2>/dev/null) == "requeue 42" ]]; }
for s in parallelcluster.sbatch slurm_train.sbatch; do
  requeue_job "$s" USR1
  check "$s: SIGUSR1, stopped with training left: scontrol requeue 42, one line, exit 0" \
    eval 'requeued && [[ $rc -eq 0 && $out == *"requeued job 42 (restart 1): training stopped at epoch 3 step 1 (global step 9)"* ]]'
  requeue_job "$s" USR1 SLURM_RESTART_COUNT=2
  check "$s: the restart count in the line is SLURM_RESTART_COUNT + 1" eval 'requeued && [[ $out == *"(restart 3)"* ]]'
  requeue_job "$s" USR1 FAKE_STATUS='state=finished\nstart_step=4\nglobal_step=9\n'
  check "$s: SIGUSR1 but training finished: not requeued, says so" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"not requeued: training finished (global step 9)"* ]]'
  requeue_job "$s" USR1 FAKE_STATUS='state=stopped-unsaved\nstart_step=0\nglobal_step=9\n'
  check "$s: stopped without --checkpoint-dir: not requeued (nothing to resume from)" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"not requeued: training stopped without a checkpoint"* ]]'
  requeue_job "$s" USR1 SRUN_RC=3
  check "$s: train_resnet18 failed (exit 3): not requeued, the job ends with 3" \
    eval '! requeued && [[ $rc -eq 3 && $out == *"not requeued: train_resnet18 failed (exit 3)"* ]]'
  requeue_job "$s" USR1 FAKE_STATUS='state=stopped\nstart_step=9\nglobal_step=9\nepoch=3\nstep_in_epoch=1\n'
  check "$s: no step trained in this run: not requeued" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"not requeued: no progress in this run"* ]]'
  requeue_job "$s" USR1 FAKE_STATUS='state=running\nstart_step=4\n'
  check "$s: no final status: not requeued" eval '! requeued && [[ $out == *"not requeued: train_resnet18 left no final status"* ]]'
  requeue_job "$s" USR1 SLURM_RESTART_COUNT=10
  check "$s: 10 restarts (MAX_RESTARTS default 10): not requeued, names the limit and the --job-name to resubmit with" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"not requeued: job 42 has restarted 10 time(s), the limit MAX_RESTARTS=10"*"resubmit with --job-name=job"* ]]'
  requeue_job "$s" USR1 SLURM_RESTART_COUNT=1 MAX_RESTARTS=2
  check "$s: MAX_RESTARTS=2 after 1 restart: requeued" requeued
  requeue_job "$s" USR1 MAX_RESTARTS=0
  check "$s: MAX_RESTARTS=0: not requeued" eval '! requeued && [[ $out == *"the limit MAX_RESTARTS=0"* ]]'
  requeue_job "$s" - MAX_RESTARTS=x FAKE_NOWAIT=1
  check "$s: MAX_RESTARTS=x: exit 2, named, before srun" \
    eval '[[ $rc -eq 2 && $out == *"MAX_RESTARTS must be a number of restarts, got '\''x'\''"* && ! -f $TMP/srun.started ]]'
  requeue_job "$s" USR1 SCONTROL_RC=1
  check "$s: scontrol requeue fails: says why and to resubmit with the same --job-name; exit 0 (the trainer's)" \
    eval '[[ $rc -eq 0 && $out == *"could not requeue job 42 (scontrol requeue: Requested operation is presently disabled"*"resubmit with --job-name=job"* ]]'
  requeue_job "$s" USR1 -- --resume /c/ckpt-4.h5
  check "$s: --resume FILE: not requeued (the requeued run would start from FILE again), says so" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"not requeued: --resume '\''/c/ckpt-4.h5'\'' would start the requeued run from there again"* ]]'
  requeue_job "$s" USR1 -- --resume=auto
  check "$s: --resume=auto given: requeued" requeued
  printf 'epochs = 2\nresume = /c/ckpt-4.h5\n' >"$TMP/resume.cfg"
  requeue_job "$s" USR1 -- --config "$TMP/resume.cfg"
  check "$s: resume = FILE in a --config file: not requeued" eval '! requeued && [[ $out == *"not requeued: --resume '\''/c/ckpt-4.h5'\''"* ]]'
  requeue_job "$s" - FAKE_NOWAIT=1 -- --status-file /tmp/x
  check "$s: --status-file given: exit 2 before srun, says to set STATUS" \
    eval '[[ $rc -eq 2 && $out == *"--status-file is this script'\''s own"*"STATUS=FILE"* && ! -f $TMP/srun.started ]]'
  # Slurm runs a spooled copy of the script (.../slurm_script): the messages name the script itself.
  cp "$ROOT/jobs/$s" "$TMP/spool/slurm_script"
  out=$(cd "$TMP" && env PATH="$TMP/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NAME=job ROOT="$TMP" MAX_RESTARTS=x \
    bash "$TMP/spool/slurm_script" 2>&1); rc=$?
  check "$s run as Slurm's spooled copy: the error line starts '$s:', not the copy's path" \
    bash -c '[[ $1 -eq 2 && $2 == "$3: MAX_RESTARTS must be"* && $2 != *slurm_script* ]]' _ "$rc" "$out" "$s"
  # Submitted elsewhere than the repository (no build there): said before srun, not srun's execve() error.
  requeue_job "$s" - ROOT="$TMP/elsewhere" FAKE_NOWAIT=1
  check "$s: ROOT without a built train_resnet18: exit 2 before srun, names the path and ROOT/TRAIN" \
    eval '[[ $rc -eq 2 && $out == "$s: no executable train_resnet18 at '\''$TMP/elsewhere/build/src/apps/train_resnet18'\'' (ROOT=$TMP/elsewhere;"*"set ROOT=REPOSITORY or TRAIN=BINARY"* && ! -f $TMP/srun.started ]]'
  requeue_job "$s" - TRAIN="$TMP/nosuch" FAKE_NOWAIT=1
  check "$s: TRAIN not an executable file: exit 2 before srun, names TRAIN" \
    eval '[[ $rc -eq 2 && $out == "$s: TRAIN='\''$TMP/nosuch'\'' is not an executable file"* && ! -f $TMP/srun.started ]]'
  requeue_job "$s" USR1+TERM FAKE_STOP_S=1
  check "$s: SIGUSR1, then SIGTERM before the stop ended (the time limit): not requeued, says a larger margin helps" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"SIGTERM (the time limit, or scancel) came before the stop ended"* ]]'
  requeue_job "$s" TERM
  check "$s: SIGTERM (preemption, scancel): not requeued by the script, says Slurm requeues a preempted job" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"stopped at SIGTERM with a checkpoint"*"Slurm requeues a preempted job"* ]]'
  requeue_job "$s" - FAKE_NOWAIT=1
  check "$s: stopped at a signal to the ranks only (scancel --signal=USR1): not requeued, says how to continue" \
    eval '! requeued && [[ $rc -eq 0 && $out == *"stopped at a signal to the ranks"*"resubmit with --job-name=job"* ]]'
  check "$s: srun gets --status-file \$LOGS/status-\$SLURM_JOB_ID" test -f "$TMP/runs/job/status-42"
done

if ((FAILS)); then printf '%d check(s) FAILED\n' "$FAILS"; exit 1; fi
echo "all checks passed"
