"""Packed VGG-Small (CIFAR-10 size) against the same model in torch float32 eager: file
size, latency at batch 1, throughput at batch 64, and the binary layers alone.

    python benchmarks/engine_speed.py [--width 1.0] [--repeats 20]

Both run in this process with the same thread count (torch intra-op threads = numba
threads), timed alternately; medians. The model's weights are random and its BatchNorm
statistics warmed on random batches: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time

import numba
import torch

from tbnn.binarize import BinaryConv2d, preset
from tbnn.export import export, load
from tbnn.models import build_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import interleaved, machine, median  # noqa: E402


def torch_binary_layer_time(model, x) -> float:
    """Seconds spent inside the binary convs (sign + conv) in one torch forward."""
    spent, starts = [0.0], {}

    def pre(m, _):
        starts[id(m)] = time.perf_counter()

    def post(m, _i, _o):
        spent[0] += time.perf_counter() - starts[id(m)]

    hooks = [h for m in model.modules() if isinstance(m, BinaryConv2d)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return spent[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    numba.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("vgg_small", num_classes=10, width=args.width, binarize=preset("paper")).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    model.eval()
    path = tempfile.mktemp(suffix=".tbnn")
    size = export(model, path)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    packed = load(path)
    res = {"machine": machine(), "threads": threads, "width": args.width, "bytes_packed_file": size,
           "bytes_float32_state_dict": buf.getbuffer().nbytes,
           "size_ratio": buf.getbuffer().nbytes / size}
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            same = bool((packed(x).argmax(1) == model(x).argmax(1)).all())
        reps = args.repeats if batch == 64 else args.repeats * 5

        def torch_fwd():
            with torch.no_grad():
                model(x)

        times = interleaved({"torch": torch_fwd, "packed": lambda: packed(x)}, reps)
        t_torch, t_packed = median(times["torch"]), median(times["packed"])
        # the binary layers alone: torch (sign + float conv) vs packed (bit-packing + XNOR-popcount)
        tb_torch = median([torch_binary_layer_time(model, x) for _ in range(reps)])
        tims = []
        for _ in range(reps):
            t = {}
            packed.run(x, timings=t)
            tims.append(t)
        tb_packed = median([t["bconv2d"] for t in tims])
        share = {k: round(median([t.get(k, 0.0) for t in tims]) / t_packed, 3) for k in tims[0]}
        res[f"batch{batch}"] = {
            "same_predictions": same, "torch_s": t_torch, "packed_s": t_packed, "speedup": t_torch / t_packed,
            "images_per_s_torch": batch / t_torch, "images_per_s_packed": batch / t_packed,
            "binary_layers_torch_s": tb_torch, "binary_layers_packed_s": tb_packed,
            "binary_layers_speedup": tb_torch / tb_packed, "packed_time_share_by_op": share,
        }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
