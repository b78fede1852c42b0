#!/usr/bin/env bash
# The default job (binary, paper preset) and the same config in full precision, one after
# the other, each timed end to end; prints the lines of their final reports.
#   bash benchmarks/default_job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
for preset in paper none; do
  start=$(date +%s.%N)
  python src/train.py binarize=$preset callbacks.progress_bar=none > "outputs/default_job_$preset.log" 2>&1
  end=$(date +%s.%N)
  echo "binarize=$preset: end-to-end $(echo "$end - $start" | bc) s"
  grep -E "test top-1|model size|outputs:" "outputs/default_job_$preset.log"
done
