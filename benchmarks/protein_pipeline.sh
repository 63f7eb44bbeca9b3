#!/usr/bin/env bash
# The protein domain end to end on the embedded UniProt subset, each stage timed:
#   pretrain (teacher) -> train (DiDi-Instruct student) -> sample (FASTA) -> eval (teacher 8/64, student 8).
#
#   bash benchmarks/protein_pipeline.sh OUT            # e.g. OUT=bench/protein
#
# Budgets are environment variables (defaults below); TRAIN_SET holds extra `--set key=value` options.
# Writes OUT/timings.json (seconds per stage, the three stages the issue times summed) and the eval
# reports OUT/eval-teacher/, OUT/eval-student/ (eval.json + eval.md). docs/benchmarks.md quotes a run.
set -euo pipefail
OUT=${1:?usage: protein_pipeline.sh OUT}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-2400}
TRAIN_ITERATIONS=${TRAIN_ITERATIONS:-300}
TRAIN_ROWS=${TRAIN_ROWS:-4}
EVAL_SAMPLES=${EVAL_SAMPLES:-1024}
TRAIN_SET=${TRAIN_SET:-"--student-lr 5e-5 --set warmup_steps=15 --set disc_lr=1e-3 --set disc_warmup_steps=10 --set ema_decay=0.95 --set kl_weight=0.5 --set disc_objective=sequence"}
mkdir -p "$OUT"

stage() {  # stage NAME COMMAND...: run, time, append "NAME": seconds to OUT/timings.tmp
  local name=$1; shift
  local start seconds
  start=$EPOCHREALTIME
  "$@"
  seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  echo "\"$name\": $seconds" >> "$OUT/timings.tmp"
  echo "== $name: $seconds s"
}

rm -f "$OUT/timings.tmp"
stage pretrain discdistill pretrain --domain protein --out "$OUT/teacher" --steps "$PRETRAIN_STEPS" --batch-size 32 \
    --lr 2e-3 --quiet --set warmup_steps=50 --set eval_every=200
# shellcheck disable=SC2086  # TRAIN_SET is a list of options
stage train discdistill train --domain protein --teacher "$OUT/teacher" --out "$OUT/student" \
    --iterations "$TRAIN_ITERATIONS" --batch-rows "$TRAIN_ROWS" --quiet $TRAIN_SET
stage sample discdistill sample --domain protein --checkpoint "$OUT/student" --steps 8 --num-samples 64 \
    --out "$OUT/student-8steps.fasta"
stage eval_teacher discdistill eval --domain protein --checkpoint "$OUT/teacher" --steps 8,64 \
    --num-samples "$EVAL_SAMPLES" --quiet --out "$OUT/eval-teacher"
stage eval_student discdistill eval --domain protein --checkpoint "$OUT/student" --steps 8 \
    --num-samples "$EVAL_SAMPLES" --quiet --reference "$OUT/eval-teacher/eval.json" --out "$OUT/eval-student"

python - "$OUT" <<'EOF'
import json, platform, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = (out / "timings.tmp").read_text().splitlines()
times = {name: float(value) for name, value in (line.replace('"', "").split(": ") for line in lines)}
times["pretrain+train+sample"] = times["pretrain"] + times["train"] + times["sample"]
record = {"seconds": times, "machine": platform.platform(), "processor": platform.processor()}
(out / "timings.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
EOF
