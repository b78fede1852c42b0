#!/usr/bin/env bash
# The default job (binary, paper preset) and the same config in full precision, one after the
# other, each timed end to end (interpreter start to the printed report). Prints the machine
# (CPU model, family/model numbers, ISA flags) and each run's report lines, and writes them all to
# benchmarks/results/default_job_<isa>.json (one file per machine kind).
#   ../shared/tools/quiet-run bash benchmarks/default_job.sh [PRESETS...]   (default: paper none)
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
if [ $# -gt 0 ]; then presets=("$@"); else presets=(paper none); fi
machine=$(python benchmarks/common.py)
echo "machine: $machine"
runs=()
mkdir -p outputs
for preset in "${presets[@]}"; do
  log="outputs/default_job_$preset.log"
  start=$(date +%s.%N)
  python src/train.py binarize="$preset" callbacks.progress_bar=none > "$log" 2>&1
  end=$(date +%s.%N)
  seconds=$(echo "$end - $start" | bc)
  echo "binarize=$preset: end-to-end $seconds s"
  grep -E "test top-1|model size|outputs:" "$log"
  runs+=("$preset=$seconds=$(sed -n 's/^outputs: \(.*\) (.*$/\1/p' "$log")")
done
python - "${runs[@]}" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from common import machine_fields

rows = []
for arg in sys.argv[1:]:
    preset, seconds, run = arg.split("=", 2)
    m = json.loads((Path(run) / "metrics.json").read_text())
    rows.append({"binarize": preset, "end_to_end_s": round(float(seconds), 1),
                 **{k: m[k] for k in ("test_acc_top1", "val_acc_top1", "train_time_s", "wall_time_s", "epochs",
                                      "bytes_float32", "bytes_packed", "run_dir")}})
fields = machine_fields()
out = Path("benchmarks/results") / f"default_job_{'-'.join(fields['isa']) or 'unknown'}.json"
out.write_text(json.dumps({**fields, "runs": rows}, indent=2) + "\n")
print(f"wrote {out}")
EOF
