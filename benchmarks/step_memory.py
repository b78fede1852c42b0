"""Memory of one training step, binary (paper) vs full-precision VGG-Small, eager and
torch.compile'd, on the CPU. Each configuration runs in a fresh process whose allocator returns
every tensor-sized block to the system when it is freed (MALLOC_MMAP_THRESHOLD_=64 KiB), so the
resident size follows the live tensors. After warm-up steps it reports, above the RSS before
the step: the memory held between forward and backward (what autograd, or inductor's compiled
graph, keeps for backward, comparable with step_time.py's saved-tensor count in eager mode)
and the step's peak (kernel high-water mark, reset through /proc/self/clear_refs).

    python benchmarks/step_memory.py [--batch 64] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, torch, torch.nn.functional as F
from tbnn.binarize import param_groups, preset, project_
from tbnn.models import build_model
name, compiled, batch = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
torch.manual_seed(0)
net = build_model("vgg_small", num_classes=10, binarize=preset(name))
if compiled:
    net.compile()
opt = torch.optim.Adam(param_groups(net, 0.0), lr=1e-3)
x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    project_(net)
def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024
for _ in range(3):
    step()
open("/proc/self/clear_refs", "w").write("5")
start = rss("VmRSS:")
opt.zero_grad(set_to_none=True)
loss = F.cross_entropy(net(x), y)
held = rss("VmRSS:") - start
loss.backward()
opt.step()
project_(net)
print(held, rss("VmHWM:") - start)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}
    res = {"batch": args.batch, "held_for_backward_mib": {}, "step_peak_mib": {}}
    for compiled in ("0", "1"):
        for name in ("none", "paper"):
            out = subprocess.run([sys.executable, "-c", CHILD, name, compiled, str(args.batch)], capture_output=True,
                                 text=True, check=True, env=env).stdout.split()
            key = f"{name}_{'compiled' if compiled == '1' else 'eager'}"
            res["held_for_backward_mib"][key], res["step_peak_mib"][key] = float(out[-2]), float(out[-1])
    for field in ("held_for_backward_mib", "step_peak_mib"):
        p = res[field]
        res[field]["binary_over_float"] = {m: p[f"paper_{m}"] / p[f"none_{m}"] for m in ("eager", "compiled")}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
