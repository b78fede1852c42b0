"""Training-step time and peak memory of binary VGG-Small against the same network in full
precision (binarize=none): same batch, same process, interleaved, on this CPU; and the
activation memory each keeps for backward.

    python benchmarks/step_time.py [--batch 32] [--width 1.0] [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from tbnn.binarize import param_groups, preset, project_
from tbnn.models import build_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import interleaved, machine, median  # noqa: E402


def make_step(preset_name: str, batch: int, width: float):
    torch.manual_seed(0)
    model = build_model("vgg_small", num_classes=10, width=width, binarize=preset(preset_name))
    opt = torch.optim.Adam(param_groups(model, 0.0), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        project_(model)
    return step


def saved_for_backward_mib(step) -> float:
    """Bytes autograd keeps for backward in one step (distinct storages): the activation
    memory, which is where a binary and a float network of the same shape differ."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    steps = {name: make_step(name, args.batch, args.width) for name in ("none", "paper")}
    times = interleaved(steps, args.repeats)
    fp, binary = median(times["none"]), median(times["paper"])
    with torch.autograd.profiler.profile() as prof:
        steps["paper"]()
    result = {
        "machine": machine(), "batch": args.batch, "width": args.width, "repeats": args.repeats,
        "fp_step_s": fp, "binary_step_s": binary, "ratio": binary / fp,
        "fp_saved_for_backward_mib": saved_for_backward_mib(steps["none"]),
        "binary_saved_for_backward_mib": saved_for_backward_mib(steps["paper"]),
    }
    print(json.dumps(result, indent=2))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
