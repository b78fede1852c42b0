"""tbnn's packed engine beside the runtimes a user would deploy instead, on VGG-Small at
CIFAR-10 size, in one process, interleaved, with the same thread count everywhere:

    python benchmarks/peers.py [--threads 2] [--rounds 200] [--json OUT]

- tbnn: the packed binary network (paper preset), ``tbnn.export.load(...)(x)``;
- torch fp32: the same architecture in full precision (``binarize=none``), eager;
- ONNX Runtime fp32: that full-precision network exported by ``torch.onnx.export``.

Latency at batch 1, back-to-back (calls in a row) and cold (each call after a 50 ms pause,
as a server that is not saturated sees them), median and p90; throughput at batch 64 (the
second of two calls in a row, after a pause for the other systems' threads); the
binary layers alone (tbnn's kernels vs torch's sign + float conv of the same layers, batch
64). The machine should be idle: take figures with ../shared/tools/quiet-run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tbnn.binarize import preset
from tbnn.export import export, load
from tbnn.export.onnx import onnx_bytes
from tbnn.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, p90  # noqa: E402


def networks(threads: int):
    """name -> callable(x: torch.Tensor) for the three systems, and the binary torch model."""
    import numba
    import onnxruntime as ort

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    torch.manual_seed(0)
    binary = build_model("vgg_small", num_classes=10, binarize=preset("paper")).train()
    fp = build_model("vgg_small", num_classes=10, binarize=preset("none")).train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics that are not the initial ones
            x = torch.randn(32, 3, 32, 32)
            binary(x), fp(x)
    binary.eval(), fp.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg_small.tbnn"
        export(binary, path, meta={"in_channels": 3, "input_size": 32})
        packed = load(path)  # read whole: the file is not needed after
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(onnx_bytes(fp, (3, 32, 32)), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def torch_fp(x):
        with torch.no_grad():
            return fp(x)
    return {"tbnn": packed, "torch_fp32": torch_fp, "onnxruntime_fp32": lambda x: sess.run(None, {name: x.numpy()})[0]
            }, binary, packed


def timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def latency(systems: dict, rounds: int, pause: float, block: int = 10) -> dict:
    """Batch-1 latency per system, interleaved by blocks of ``block`` calls after a pause in
    which the previous system's threads stop spinning (the first call of a block is not
    counted), each call after ``pause`` seconds: 0 is back-to-back, a pause lets every thread
    pool fall asleep (cold)."""
    x = torch.randn(1, 3, 32, 32)
    for fn in systems.values():
        for _ in range(5):
            fn(x)
    times = {k: [] for k in systems}
    for _ in range(max(1, rounds // block)):
        for k, fn in systems.items():
            time.sleep(0.1)  # the previous system's threads stop spinning
            for i in range(block + 1):
                if pause:
                    time.sleep(pause)
                t = timed(fn, x)
                if i:
                    times[k].append(t)
    return {k: {"median_ms": 1e3 * statistics.median(v), "p90_ms": 1e3 * p90(v)} for k, v in times.items()}


def throughput(systems: dict, rounds: int) -> dict:
    x = torch.randn(64, 3, 32, 32)
    for fn in systems.values():
        fn(x)
    times = {k: [] for k in systems}
    for _ in range(rounds):
        for k, fn in systems.items():
            time.sleep(0.1)  # the previous system's threads stop spinning
            fn(x)
            times[k].append(timed(fn, x))
    return {k: {"images_per_s": 64 / statistics.median(v), "median_ms": 1e3 * statistics.median(v),
                "p90_ms": 1e3 * p90(v)} for k, v in times.items()}


def binary_layers(binary, packed, rounds: int) -> dict:
    """Seconds in the binary layers at batch 64: tbnn's steps for bconv2d nodes vs torch's
    BinaryConv2d modules (sign + float conv), hooked in the same forward."""
    from tbnn.binarize import BinaryConv2d

    x = torch.randn(64, 3, 32, 32)
    spent, starts = [0.0], {}

    def pre(m, _):
        starts[id(m)] = time.perf_counter()

    def post(m, _i, _o):
        spent[0] += time.perf_counter() - starts[id(m)]

    hooks = [h for m in binary.modules() if isinstance(m, BinaryConv2d)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    binary_slots = {o for _, _, o in packed.plan.steps if packed.nodes[o]["op"] == "bconv2d"}
    t_torch, t_tbnn = [], []
    for _ in range(rounds):
        spent[0] = 0.0
        with torch.no_grad():
            binary(x)
        t_torch.append(spent[0])
        values = [None] * packed.plan.n_slots
        total = 0.0
        for fn, ins, out in packed.plan.steps:
            t0 = time.perf_counter()
            values[out] = fn(x, *[values[i] for i in ins])
            if out in binary_slots:
                total += time.perf_counter() - t0
        t_tbnn.append(total)
    for h in hooks:
        h.remove()
    return {"torch_ms": 1e3 * statistics.median(t_torch), "tbnn_ms": 1e3 * statistics.median(t_tbnn),
            "speedup": statistics.median(t_torch) / statistics.median(t_tbnn)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200, help="batch-1 rounds (batch 64: a tenth)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    systems, binary, packed = networks(args.threads)
    x = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        same = bool((packed(x).argmax(1) == binary(x).argmax(1)).all())
    b2b = latency(systems, args.rounds, 0.0)
    cold = latency(systems, max(20, args.rounds // 4), 0.05, block=2)
    thr = throughput(systems, max(10, args.rounds // 10))
    res = {"machine": machine(), "threads": args.threads, "same_predictions_as_torch_binary": same,
           "batch1_back_to_back": b2b, "batch1_cold": cold, "batch64": thr,
           "binary_layers_batch64": binary_layers(binary, packed, max(5, args.rounds // 20))}
    ort = "onnxruntime_fp32"
    res["tbnn_vs_onnxruntime"] = {
        "batch1_back_to_back": b2b[ort]["median_ms"] / b2b["tbnn"]["median_ms"],
        "batch1_cold": cold[ort]["median_ms"] / cold["tbnn"]["median_ms"],
        "batch64": thr["tbnn"]["images_per_s"] / thr[ort]["images_per_s"]}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
