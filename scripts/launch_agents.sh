#!/usr/bin/env bash
# One W&B sweep agent per GPU:  scripts/launch_agents.sh SWEEP_ID GPUS [LOG_DIR]
#   wandb sweep sweeps/ablation_scales.yaml        # prints the SWEEP_ID (entity/project/id)
#   scripts/launch_agents.sh entity/tbnn/abc123 0,1,2,3
# Each agent sees one GPU (CUDA_VISIBLE_DEVICES) and logs to LOG_DIR/agent_<gpu>.log
# (default logs/<sweep id>/). The script waits for all agents; Ctrl-C stops them all.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 SWEEP_ID GPUS [LOG_DIR]   (GPUS: comma-separated ids, e.g. 0,1,2,3)" >&2
  exit 2
fi
sweep_id=$1
IFS=, read -ra gpus <<< "$2"
log_dir=${3:-logs/${sweep_id//\//_}}
mkdir -p "$log_dir"
cd "$(dirname "$0")/.."
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
for gpu in "${gpus[@]}"; do
  CUDA_VISIBLE_DEVICES=$gpu wandb agent "$sweep_id" > "$log_dir/agent_$gpu.log" 2>&1 &
  pids+=($!)
  echo "agent on GPU $gpu: pid $!, log $log_dir/agent_$gpu.log"
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
