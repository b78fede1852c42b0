"""tbnn's packed engine beside the runtimes a user would deploy instead, on VGG-Small at
CIFAR-10 size, in one process, interleaved, with the same thread count everywhere:

    python benchmarks/peers.py [--threads 2] [--rounds 200] [--json OUT] [--data DIR]

- tbnn: the packed binary network (paper preset), ``tbnn.export.load(...)(x)``;
- torch fp32: the same architecture in full precision (``binarize=none``), eager;
- ONNX Runtime fp32: that full-precision network exported by ``torch.onnx.export``;
- ONNX Runtime int8: the same ONNX model quantised statically by ONNX Runtime's quantiser
  (QDQ format, per-channel int8 weights, uint8 activations: the u8 x s8 products of x86's
  int8 dot instructions; BatchNorm folded first), calibrated on 256 real CIFAR-10 training
  images (``--data``: a folder with ``jpeg_bytes.npz`` or ``train.npz``);
- OpenVINO fp32 and int8: OpenVINO running the fp32 ONNX model (f32 precision forced: on a
  CPU with bf16 it would otherwise compute in bf16) and the same QDQ model, each compiled once
  per batch size (static shapes, its fastest), latency hint, the same thread count.
  OpenVINO is optional (``pip install -e .[bench]``); without it its rows are left out.

Latency at batch 1, back-to-back (calls in a row) and cold (each call after a 50 ms pause,
as a server that is not saturated sees them), median and p90; throughput at batch 64 (the
second of two calls in a row, after a pause for the other systems' threads); the
binary layers alone (tbnn's kernels vs torch's sign + float conv of the same layers, batch
64). The machine should be idle: take figures with ../shared/tools/quiet-run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tbnn.binarize import preset
from tbnn.export.onnx import onnx_bytes
from tbnn.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, machine_fields, p90, warm  # noqa: E402
from common import packed as packed_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("TBNN_SHARED_DATA", REPO.parent / "shared" / "data")) / "cifar10_jpeg"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the CIFAR-10 data module's


def calibration_images(folder: Path, n: int = 256) -> torch.Tensor:
    """``n`` real CIFAR-10 training images (a seeded random pick: the copies may be sorted by
    class), normalised as for training."""
    from tbnn.data.cifar10 import JPEG_FILE, decode_jpeg_file
    from tbnn.data.files import load_npz_folder, npz_folder

    if npz_folder(folder):
        x = load_npz_folder(folder)[0]
    elif (folder / JPEG_FILE).is_file():
        x = decode_jpeg_file(folder / JPEG_FILE)[0]
    else:
        sys.exit(f"peers.py: no CIFAR-10 images in {folder} (int8 calibration needs real ones): "
                 f"give --data DIR, a folder with train.npz or {JPEG_FILE}")
    pick = np.random.default_rng(0).choice(len(x), n, replace=False)
    x = torch.from_numpy(x[pick]).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def quantised_int8(fp_onnx: bytes, images: torch.Tensor) -> bytes:
    """The fp32 ONNX model quantised by ONNX Runtime: static QDQ, per-channel s8 weights, u8
    activations calibrated (min-max) on ``images``, after its pre-processing (shape inference,
    BatchNorm folded into the convolutions)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": images[i:i + 32].numpy()} for i in range(0, len(images), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp_onnx)
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def openvino_system(model_bytes: bytes, threads: int, f32: bool):
    """callable(x) running ``model_bytes`` (ONNX) in OpenVINO on the CPU, compiled once per batch
    size; None when OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = {}

    def run(x):
        n = x.shape[0]
        if n not in compiled:
            model = core.read_model(model_bytes, b"")
            model.reshape([n, *x.shape[1:]])
            compiled[n] = core.compile_model(model, "CPU", config).create_infer_request()
        return compiled[n].infer({0: x.numpy()})[0]
    return run


def networks(threads: int, images: torch.Tensor):
    """name -> callable(x: torch.Tensor) for every system, the binary torch model, the packed
    one and the full-precision one."""
    import numba
    import onnxruntime as ort

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    torch.manual_seed(0)
    binary = build_model("vgg_small", num_classes=10, binarize=preset("paper"))
    fp = build_model("vgg_small", num_classes=10, binarize=preset("none"))
    warm(binary, fp)
    packed = packed_file(binary)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    fp_onnx = onnx_bytes(fp, (3, 32, 32))
    int8_onnx = quantised_int8(fp_onnx, images)

    def ort_system(model_bytes):
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x.numpy()})[0]

    def torch_fp(x):
        with torch.no_grad():
            return fp(x)
    systems = {"tbnn": packed, "torch_fp32": torch_fp, "onnxruntime_fp32": ort_system(fp_onnx),
               "onnxruntime_int8": ort_system(int8_onnx),
               "openvino_fp32": openvino_system(fp_onnx, threads, f32=True),
               "openvino_int8": openvino_system(int8_onnx, threads, f32=False)}
    return {k: v for k, v in systems.items() if v is not None}, binary, packed, fp


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
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="CIFAR-10 folder for the int8 calibration (jpeg_bytes.npz or train.npz)")
    args = ap.parse_args()
    images = calibration_images(args.data)
    systems, binary, packed, fp = networks(args.threads, images)
    x = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        same = bool((packed(x).argmax(1) == binary(x).argmax(1)).all())
        fp_top1 = fp(images).argmax(1)
    # the quantised peers against their own fp32 network on the real images (quantisation error)
    int8_agreement = {k: float((torch.as_tensor(fn(images)).argmax(1) == fp_top1).float().mean())
                      for k, fn in systems.items() if k.endswith("int8")}
    b2b = latency(systems, args.rounds, 0.0)
    cold = latency(systems, max(20, args.rounds // 4), 0.05, block=2)
    thr = throughput(systems, max(10, args.rounds // 10))
    res = {"machine": machine(), **machine_fields(), "threads": args.threads,
           "same_predictions_as_torch_binary": same, "int8_top1_agreement_with_fp32": int8_agreement,
           "batch1_back_to_back": b2b, "batch1_cold": cold, "batch64": thr,
           "binary_layers_batch64": binary_layers(binary, packed, max(5, args.rounds // 20))}
    # tbnn's speed-up over each peer (> 1: tbnn faster)
    res["tbnn_vs"] = {k: {"batch1_back_to_back": b2b[k]["median_ms"] / b2b["tbnn"]["median_ms"],
                          "batch1_cold": cold[k]["median_ms"] / cold["tbnn"]["median_ms"],
                          "batch64": thr["tbnn"]["images_per_s"] / thr[k]["images_per_s"]}
                      for k in systems if k != "tbnn"}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
