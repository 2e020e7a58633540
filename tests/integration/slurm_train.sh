#!/usr/bin/env bash
# A real one-node Slurm on this machine: munged, slurmctld and slurmd with a generated slurm.conf in
# a temp dir; sbatch jobs/slurm_train.sbatch with a tiny synthetic run (2 tasks, srun --mpi=pmix);
# assert the job completes, trained and wrote its checkpoint. Cleans up everything it started.
# Usage: slurm_train.sh TRAIN_BINARY SOURCE_DIR
# Exit 77 (CTest: skipped) where Slurm or munge is not installed or cannot start here.
set -uo pipefail
TRAIN=$1 SRC=$2
# shellcheck source-path=SCRIPTDIR source=slurm_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_cluster.sh"

# The real job script, with a tiny synthetic run; 2 tasks on this one node.
cd "$T/work" || exit 1
# This host has no GPUs (no gres configured): the copy drops only the script's --gpus-per-node line.
grep -v -- '--gpus-per-node' "$SRC/jobs/slurm_train.sbatch" >"$T/work/slurm_train.sbatch"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export ROOT=$T/work TRAIN DATA=synthetic
# --keep-checkpoints, --workers and --progress=lines repeat flags the script sets itself: the user's win
# (train_resnet18 refuses a flag given twice), so 1 of the run's 2 epoch-end checkpoints is kept.
export ARGS="--synthetic-size 32 --synthetic-classes 4 --image-size 32 --batch-size 8 --epochs 2 --backend cpu --threads 1 --keep-checkpoints 1 --workers 1 --progress=lines"
jid=$(sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 --export=ALL \
  "$T/work/slurm_train.sbatch") || { tail -20 "$T"/log/*; echo "FAIL: sbatch refused the job"; exit 1; }
echo "submitted job $jid"
state=""
for _ in $(seq 1 300); do
  state=$(scontrol show job "$jid" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  [[ $state =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]] && break
  sleep 1
done
out=$(find "$T/work" -maxdepth 1 -name "*-$jid.out" | head -1)
echo "job $jid: $state"
[[ -n $out ]] && cat "$out"
ok=1
[[ $state == COMPLETED ]] || { echo "FAIL: job state $state"; ok=0; }
grep -q "summary: 4 steps" "$out" 2>/dev/null || { echo "FAIL: no training summary in the job output"; ok=0; }
grep -q "2 ranks on 1 node" "$out" 2>/dev/null || { echo "FAIL: srun --mpi=pmix did not start 2 ranks of one job"; ok=0; }
ls "$T"/work/checkpoints/*/ckpt-*.h5 >/dev/null 2>&1 || { echo "FAIL: no checkpoint written"; ok=0; }
kept=$(find "$T"/work/checkpoints -name 'ckpt-*.h5' | wc -l)
[[ $kept -eq 1 ]] || { echo "FAIL: $kept checkpoints kept, not the 1 of the job's --keep-checkpoints 1 (the script's default is 3)"; ok=0; }
((ok)) || { tail -30 "$T"/log/slurmd.log "$T"/log/slurmctld.log; exit 1; }
echo "PASS: Slurm ran jobs/slurm_train.sbatch to completion"

# A stop for good: scancel --signal=USR1 (the tasks, not the batch shell) reaches every task; the ranks
# checkpoint at the next step and exit 0 (job COMPLETED), the script does not requeue it (only the
# time-limit signal to the batch shell does: slurm_requeue.sh), and a resubmitted job (--resume auto
# in the script) continues from there.
export ARGS="--synthetic-size 32 --synthetic-classes 4 --image-size 32 --batch-size 8 --epochs 500 --backend cpu --threads 1 --log-every 1 --no-eval"
jid=$(sbatch --parsable --job-name=preempt --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 --export=ALL \
  "$T/work/slurm_train.sbatch") || { echo "FAIL: sbatch refused the preemption job"; exit 1; }
for _ in $(seq 1 120); do
  grep -q '"type": "train"' "$T/work/runs/preempt/metrics.jsonl" 2>/dev/null && break
  sleep 1
done
scancel --signal=USR1 "$jid"
state=$(wait_job "$jid")
out=$(find "$T/work" -maxdepth 1 -name "preempt-$jid.out" | head -1)
echo "preemption job $jid: $state"
[[ $state == COMPLETED ]] || { cat "$out"; echo "FAIL: a SIGUSR1'd job should end COMPLETED (exit 0), got $state"; exit 1; }
grep -q "stop requested (SIGUSR1)" "$out" || { cat "$out"; echo "FAIL: no 'stop requested' in the job output"; exit 1; }
grep -q "^stopped at a signal to the ranks with a checkpoint at epoch .*; not requeued" "$out" \
  || { cat "$out"; echo "FAIL: the job script did not say it stopped without a requeue"; exit 1; }
[[ $(scontrol show job "$jid" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p') == 0 ]] || { echo "FAIL: the job was requeued"; exit 1; }
ls "$T"/work/checkpoints/preempt/ckpt-*.h5 >/dev/null 2>&1 || { cat "$out"; echo "FAIL: no checkpoint after SIGUSR1"; exit 1; }
ARGS="--synthetic-size 32 --synthetic-classes 4 --image-size 32 --batch-size 8 --epochs 500 --backend cpu --threads 1 --no-eval --max-steps $(( $(find "$T/work/checkpoints/preempt" -name 'ckpt-*.h5' -printf '%f\n' | sed -n 's/ckpt-0*\([0-9]*\)\.h5/\1/p' | sort -n | tail -1) + 2 ))"
export ARGS
jid=$(sbatch --parsable --job-name=preempt --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 --export=ALL \
  "$T/work/slurm_train.sbatch") || { echo "FAIL: sbatch refused the resumed job"; exit 1; }
state=$(wait_job "$jid")
out=$(find "$T/work" -maxdepth 1 -name "preempt-$jid.out" | head -1)
echo "resumed job $jid: $state"
if [[ $state != COMPLETED ]] || ! grep -q "resumed from" "$out"; then cat "$out"; echo "FAIL: the resubmitted job did not resume"; exit 1; fi
echo "PASS: SIGUSR1 under Slurm checkpointed, exited 0, and the next job resumed"
