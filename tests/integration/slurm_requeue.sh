#!/usr/bin/env bash
# jobs/slurm_train.sbatch requeues itself after the time-limit signal, on a real one-node Slurm
# (slurm_cluster.sh). The signal is SIGUSR1 to the batch shell, as #SBATCH --signal=B:USR1@N sends
# it (scancel --batch --signal=USR1 JOB here, at a known moment). Cases:
#   requeue:  stopped mid-run -> "requeued job N (restart 1)", the second run resumes from the
#             checkpoint and completes: every step trained exactly once, Restarts=1, no third run;
#   evaluation: the signal lands in the final evaluation, after the last step -> the evaluation is
#             interrupted (its checkpoint says it is due), the job requeued once, and the second run
#             evaluates first and finishes: one eval record, at the last step;
#   cap:      MAX_RESTARTS=0 -> not requeued, says so;
#   refused:  a job submitted with --no-requeue -> scontrol requeue fails, the log says to resubmit
#             with the same --job-name, the job ends with the trainer's status (0: COMPLETED).
# Usage: slurm_requeue.sh TRAIN_BINARY SOURCE_DIR
# Exit 77 (CTest: skipped) where Slurm or munge is not installed or cannot start here.
set -uo pipefail
TRAIN=$(realpath "$1") SRC=$(realpath "$2")
# A requeued job starts again once the credential lifetime has passed (120 s by default: 10 s here),
# at the scheduler's next look at pending jobs (every 60 s by default: 5 s here).
CRED_EXPIRE=10 SCHED_INTERVAL=5
# shellcheck source-path=SCRIPTDIR source=slurm_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_cluster.sh"

cd "$T/work" || exit 1
grep -v -- '--gpus-per-node' "$SRC/jobs/slurm_train.sbatch" >"$T/work/slurm_train.sbatch"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export ROOT=$T/work TRAIN DATA=synthetic
# 2 ranks x batch 8 on 32 images (SIZE32): 2 steps per epoch, a few steps a second.
SIZE32="--synthetic-size 32"
TINY="--synthetic-classes 4 --image-size 32 --batch-size 8 --backend cpu --threads 1 --workers 1 --log-every 1 --progress lines"
FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
# submit NAME [sbatch flags...]: prints the job id
submit() {
  local name=$1; shift
  sbatch --parsable --job-name="$name" --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 --export=ALL "$@" \
    "$T/work/slurm_train.sbatch"
}
# wait_for JOBID FILE PATTERN: until the file has a line matching the (extended) pattern; fails when
# the job has ended first, or after 120 s
wait_for() {
  for _ in $(seq 1 240); do
    grep -qE -- "$3" "$2" 2>/dev/null && return 0
    [[ $(field "$1" JobState) =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT)$ ]] && return 1
    sleep 0.5
  done
  return 1
}
# the train records' steps in a metrics file, one a line
train_steps() { sed -n 's/.*"type": "train", "step": \([0-9]*\),.*/\1/p' "$1"; }
# stopped_job NAME PATTERN [sbatch flags...]: submits job NAME (flags from $ARGS), waits until its
# metrics have a line matching PATTERN, sends the time-limit signal to its batch shell and waits for
# the job's end; sets jid, state, restarts, out (its output file) and prints the output.
stopped_job() {
  local name=$1 pattern=$2 t=$SECONDS
  shift 2
  jid=$(submit "$name" "$@") || { echo "FAIL: sbatch refused the job"; exit 1; }
  wait_for "$jid" "$T/work/runs/$name/metrics.jsonl" "$pattern" || fail "$name: no training"
  scancel --batch --signal=USR1 "$jid"
  state=$(wait_job "$jid")
  restarts=$(field "$jid" Restarts)
  out=$T/work/$name-$jid.out
  echo "$name job $jid: $state, Restarts=$restarts, ExitCode=$(field "$jid" ExitCode) ($((SECONDS - t)) s)"
  cat "$out"
}
t0=$SECONDS

# ---- requeue: stopped by the time-limit signal, requeued once, resumed, completed ------------------
TOTAL=40
export ARGS="$SIZE32 $TINY --epochs 500 --no-eval --max-steps $TOTAL"
stopped_job requeue '"type": "train", "step": 4,'
[[ $state == COMPLETED ]] || fail "requeue: job state $state, not COMPLETED"
[[ $restarts == 1 ]] || fail "requeue: Restarts=$restarts, not 1 (requeued once)"
grep -qE "^requeued job $jid \(restart 1\): training stopped at epoch [0-9]+ step [0-9]+" "$out" \
  || fail "requeue: no 'requeued job $jid (restart 1): training stopped at epoch E step S' line"
grep -q "restart 2" "$out" && fail "requeue: a third run (restart 2)"
[[ $(grep -c "resumed from" "$out") -eq 1 ]] || fail "requeue: the second run did not resume from the checkpoint (once)"
grep -qE "summary: [0-9]+ steps in this run \(global step $TOTAL\)" "$out" \
  || fail "requeue: the job did not end with all $TOTAL steps trained"
[[ $(sed -n 's/^state=//p' "$T/work/runs/requeue/status-$jid") == finished ]] || fail "requeue: the final status is not 'finished'"
# Every step trained exactly once: the stopped run's records end at its checkpoint (it stopped at a
# step boundary and saved there), the resumed run's start after it.
steps=$(train_steps "$T/work/runs/requeue/metrics.jsonl" | tr '\n' ' ')
[[ $steps == "$(seq -s ' ' 1 $TOTAL) " ]] || fail "requeue: train steps in the metrics are [$steps], not 1..$TOTAL once each"
[[ $(grep -c '"type": "resume"' "$T/work/runs/requeue/metrics.jsonl") -eq 1 ]] || fail "requeue: not one resume record"

# ---- evaluation: the signal comes after the last step (during the final evaluation) ---------------
# 1200 images: 75 steps an epoch; --max-steps 4, then an evaluation of 1200 images and their mirrors.
# An interrupted evaluation is not the end of the run: requeued, the job runs it and finishes.
export ARGS="$TINY --synthetic-size 1200 --epochs 1 --max-steps 4 --eval-flip on"
stopped_job evaluation '"type": "train", "step": 4,'
[[ $state == COMPLETED && $restarts == 1 ]] || fail "evaluation: state $state, Restarts $restarts: not COMPLETED after one restart"
grep -q "evaluation interrupted after [0-9]* of [0-9]* batches" "$out" || fail "evaluation: the evaluation was not interrupted"
grep -qE "^requeued job $jid \(restart 1\)" "$out" || fail "evaluation: not requeued after the interrupted evaluation"
grep -q "restart 2" "$out" && fail "evaluation: a third run (restart 2)"
grep -q "was left undone by the stop of the run that wrote .*: evaluating it first" "$out" \
  || fail "evaluation: the requeued run did not evaluate first"
evals=$(grep '"type": "eval"' "$T/work/runs/evaluation/metrics.jsonl")
[[ $(grep -c . <<<"$evals") -eq 1 && $evals == *'"step": 4,'* ]] || fail "evaluation: eval records [$evals], not one at step 4"
[[ $(sed -n 's/^state=//p' "$T/work/runs/evaluation/status-$jid") == finished ]] || fail "evaluation: the final status is not 'finished'"

# ---- cap: MAX_RESTARTS=0 ---------------------------------------------------------------------------
export ARGS="$SIZE32 $TINY --epochs 500 --no-eval" MAX_RESTARTS=0
stopped_job cap '"type": "train"'
unset MAX_RESTARTS
[[ $state == COMPLETED && $restarts == 0 ]] || fail "cap: state $state, Restarts $restarts: not COMPLETED without a restart"
grep -q "^not requeued: job $jid has restarted 0 time(s), the limit MAX_RESTARTS=0 " "$out" || fail "cap: no 'not requeued: ... MAX_RESTARTS=0' line"
grep -q "resubmit with --job-name=cap" "$out" || fail "cap: the line does not say to resubmit with --job-name=cap"

# ---- refused: scontrol requeue fails (a job submitted with --no-requeue) ---------------------------
export ARGS="$SIZE32 $TINY --epochs 500 --no-eval"
stopped_job refused '"type": "train"' --no-requeue
[[ $state == COMPLETED && $(field "$jid" ExitCode) == 0:0 ]] || fail "refused: state $state, exit $(field "$jid" ExitCode): not the trainer's status (COMPLETED, 0:0)"
grep -q "^could not requeue job $jid (scontrol requeue: .*resubmit with --job-name=refused" "$out" \
  || fail "refused: no 'could not requeue job ... resubmit with --job-name=refused' line"

echo "($((SECONDS - t0)) s in all)"
if ((FAILS)); then tail -20 "$T"/log/slurmctld.log; echo "$FAILS check(s) FAILED"; exit 1; fi
echo "PASS: the job script requeues after the time-limit signal only when training is left, within MAX_RESTARTS"
