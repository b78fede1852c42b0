#!/usr/bin/env bash
# The GPU checks of tbnn in one prepared run (at most 9 minutes), everything written to OUT:
#   benchmarks/gpu.sh [OUT]               on a lent GPU machine (one H100/H200, 16 cores, PyTorch,
#                                         Lightning, numba; no network: hydra-core and omegaconf are
#                                         installed from the wheels carried in .gpu/wheels)
#   benchmarks/gpu.sh --cpu-smoke [OUT]   every step at a tiny size on the CPU (run by the tests)
# Prepare here, before carrying .gpu/ (git-ignored) with the working tree:
#   pip download -d .gpu/wheels --only-binary=:all: --python-version 3.12 hydra-core omegaconf antlr4-python3-runtime==4.9.3
#   mkdir -p .gpu/data/cifar10 && cp ../shared/data/cifar10_jpeg/jpeg_bytes.npz .gpu/data/cifar10/
# Steps: the CUDA tests; binary vs float training-step time (VGG-Small, batch 128, eager vs
# compiled, bf16); device-loader vs worker-loader images/s and epochs/s of the paper recipe;
# ImageFolder + PIL images/s with all cores beside ResNet-18's; then as many epochs of the
# paper recipe (shortened cosine schedule) as fit in the time left.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu
if [ "${1:-}" = "--cpu-smoke" ]; then mode=cpu-smoke; shift; fi
out=${1:-gpu_results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
start=$(date +%s)
budget=${GPU_BUDGET_S:-540}
export PYTHONPATH=$PWD/src WANDB_MODE=disabled PYTHONUNBUFFERED=1
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/gpu.log"; }

if [ "$mode" = gpu ]; then
  python -c "import hydra, omegaconf" 2>/dev/null \
    || pip install -q --no-index --find-links .gpu/wheels hydra-core omegaconf >> "$out/install.log" 2>&1
  data=$PWD/.gpu/data/cifar10
  dev=cuda; trainer=gpu; batch=128; width=1.0; repeats=20; subset=0; workers=4; epochs_probe=1
  size=(); imagefolder=()
else
  data=${TBNN_SHARED_DATA:-$PWD/../shared/data}/cifar10_jpeg
  dev=cpu; trainer=cpu; batch=8; width=0.125; repeats=2; subset=512; workers=0; epochs_probe=1
  size=(model.width=0.125 data.train_subset=512 data.val_size=128 trainer.limit_val_batches=2
        trainer.limit_test_batches=2 data.num_workers=0)
  imagefolder=(--images 32 --jpeg-size 80 --size 64 --batch 8 --width 0.125 --workers 2 --epochs 1 --repeats 2)
fi
[ -e "$data" ] || { echo "error: no CIFAR-10 at $data (see the header of $0)" >&2; exit 2; }
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"; python -c "import torch, lightning; print('torch', torch.__version__,
  'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"; nproc; } > "$out/device.txt" 2>&1

log "1/5 CUDA tests"
python -m pytest -q -rs -m cuda -p no:cacheprovider tests/test_cuda.py > "$out/cuda_tests.txt" 2>&1 \
  || log "CUDA tests failed: see $out/cuda_tests.txt"

log "2/5 training-step time, binary vs float, eager vs compiled"
python benchmarks/gpu_bench.py step-time --device "$dev" --batch "$batch" --width "$width" --repeats "$repeats" \
  --json "$out/step_time.json" > "$out/step_time.log" 2>&1

log "3/5 device loader vs worker loader"
python benchmarks/gpu_bench.py loader --device "$dev" --data "$data" --subset "$subset" --workers "$workers" \
  --json "$out/loader.json" > "$out/loader.log" 2>&1
for loader in device workers; do
  python src/train.py experiment=paper_vgg_small_cifar10 trainer=$trainer "data.root=$data" data.loader=$loader \
    trainer.max_epochs=$epochs_probe logger=none callbacks.progress_bar=none test=false "${size[@]}" \
    "hydra.run.dir=$out/epoch_$loader" > "$out/epoch_$loader.log" 2>&1
done
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
t = {k: json.load(open(f"{out}/epoch_{k}/metrics.json"))["train_time_s"] for k in ("device", "workers")}
json.dump({"epoch_s": t, "epochs_per_s": {k: 1 / v for k, v in t.items()},
           "device_over_workers": t["workers"] / t["device"]}, open(f"{out}/epochs.json", "w"), indent=2)
PY

log "4/5 can ImageFolder + PIL feed ResNet-18?"
python benchmarks/gpu_bench.py imagefolder --device "$dev" --data "$data" "${imagefolder[@]}" \
  --json "$out/imagefolder.json" > "$out/imagefolder.log" 2>&1 || log "imagefolder failed: see $out/imagefolder.log"

left=$(( budget - ( $(date +%s) - start ) - 60 ))
epoch_s=$(python -c "import json; print(json.load(open('$out/epochs.json'))['epoch_s']['device'])")
epochs=$(python -c "print(max(1, int($left / ($epoch_s * 1.15))))")
[ "$mode" = gpu ] || epochs=1
log "5/5 the paper recipe for $epochs epochs (cosine over $epochs), $left s left"
python src/train.py experiment=paper_vgg_small_cifar10 trainer=$trainer "data.root=$data" trainer.max_epochs=$epochs \
  logger=csv callbacks.progress_bar=none "${size[@]}" "hydra.run.dir=$out/paper_run" > "$out/paper_run.log" 2>&1 \
  || log "the paper run failed: see $out/paper_run.log"

python benchmarks/gpu_bench.py summary "$out" > "$out/SUMMARY.md"
log "done: $out/SUMMARY.md"
