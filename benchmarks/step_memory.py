"""Peak memory of one training step, binary (paper) vs full-precision VGG-Small, eager and
torch.compile'd, on the CPU: each configuration in a fresh process; after warm-up steps the
kernel's peak-RSS mark is reset (/proc/self/clear_refs) and the step's peak RSS above its
starting RSS is reported (activations kept for backward plus temporaries).

    python benchmarks/step_memory.py [--batch 64] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
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
step()
print(rss("VmHWM:") - start)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = {"batch": args.batch, "peak_mib": {}}
    for compiled in ("0", "1"):
        for name in ("none", "paper"):
            out = subprocess.run([sys.executable, "-c", CHILD, name, compiled, str(args.batch)], capture_output=True,
                                 text=True, check=True).stdout
            res["peak_mib"][f"{name}_{'compiled' if compiled == '1' else 'eager'}"] = float(out.split()[-1])
    p = res["peak_mib"]
    res["binary_over_float"] = {m: p[f"paper_{m}"] / p[f"none_{m}"] for m in ("eager", "compiled")}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
