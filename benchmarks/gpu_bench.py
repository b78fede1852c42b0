"""The measurements of benchmarks/gpu.sh, also runnable on a CPU:

    python benchmarks/gpu_bench.py step-time [--device cuda] [--batch 128] [--width 1.0] --json OUT
    python benchmarks/gpu_bench.py loader [--device cuda] [--data DIR] --json OUT
    python benchmarks/gpu_bench.py summary OUT_DIR

step-time: a training step (forward, backward, Adam, projection) of binary (paper preset) and
full-precision VGG-Small on the same batch, eager and torch.compile'd, in float32 or bf16
autocast; timed interleaved (median, p90); ratios binary/float and compiled/eager.
loader: images/s of the training split's batches (gathered, augmented, normalised, on the
device) through the device loader and through the worker loader (a DataLoader, as many
workers as given), same order and same augmentation; the ratio device/workers.
imagefolder: can the ImageFolder + PIL path (random-resized crop, flip) with all the
machine's cores feed ResNet-18? Its images/s on a folder of ImageNet-sized JPEGs (made from
CIFAR-10 images), beside the images/s of a ResNet-18 training step at 224 (bf16 on CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tbnn.binarize import param_groups, preset, project_
from tbnn.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, machine, p90  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(preset_name: str, device, batch: int, width: float, compiled: bool, bf16: bool):
    torch.manual_seed(0)
    net = build_model("vgg_small", num_classes=10, width=width, binarize=preset(preset_name)).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        net.compile()
    return make_step_for(net, device, batch, 32, 10, bf16)


def step_time(args) -> dict:
    device = torch.device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    steps = {f"{p}_{mode}": make_step(p, device, args.batch, args.width, mode == "compiled", bf16)
             for p in ("paper", "none") for mode in ("eager", "compiled")}
    times = interleaved(steps, args.repeats, warmup=3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"machine": machine(), "device": _device_name(device), "batch": args.batch, "width": args.width,
            "bf16": bf16, "repeats": args.repeats,
            "median_s": med, "p90_s": {k: p90(v) for k, v in times.items()},
            "binary_over_float": {m: med[f"paper_{m}"] / med[f"none_{m}"] for m in ("eager", "compiled")},
            "compiled_over_eager": {p: med[f"{p}_compiled"] / med[f"{p}_eager"] for p in ("paper", "none")}}


def loader(args) -> dict:
    from tbnn.data.cifar10 import CIFAR10DataModule

    device = torch.device(args.device)
    rates = {}
    for kind in ("device", "workers"):
        dm = CIFAR10DataModule(root=args.data, batch_size=args.batch, val_size=0, num_workers=args.workers,
                               train_subset=args.subset, loader=kind)
        dm.setup()
        dm.target = device
        batches = dm._loader(dm.train_set, True)
        for _ in range(args.warmup_epochs):
            _epoch(dm, batches, device)
        t0 = time.perf_counter()
        n = sum(_epoch(dm, batches, device) for _ in range(args.epochs))
        rates[kind] = n / (time.perf_counter() - t0)
    return {"machine": machine(), "device": _device_name(device), "batch": args.batch, "workers": args.workers,
            "images": args.subset or 50000, "images_per_s": rates, "device_over_workers": rates["device"] /
            rates["workers"]}


def _epoch(dm, batches, device) -> int:
    """One epoch of training batches as the model receives them; returns the image count."""
    n = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = dm.preprocess(x, train=True)
        n += len(y)
    _sync(device)
    return n


def imagefolder(args) -> dict:
    import os
    import tempfile

    import numpy as np
    from PIL import Image

    from tbnn.data.cifar10 import CIFAR10DataModule
    from tbnn.data.imagenet import ImageNetDataModule

    device = torch.device(args.device)
    cifar = CIFAR10DataModule(root=args.data, val_size=0)
    cifar.setup("test")
    images, labels = cifar.test_set.x.permute(0, 2, 3, 1).numpy(), cifar.test_set.y.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):  # JPEGs of about ImageNet's mean size (400 x 350, quality 90)
            for i in range(args.images if split == "train" else 10):
                d = Path(tmp) / split / f"c{labels[i]}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(images[i])).resize(
                    (args.jpeg_size, args.jpeg_size * 7 // 8)).save(d / f"{i}.jpg", quality=90)
        workers = args.workers or os.cpu_count()
        dm = ImageNetDataModule(root=tmp, batch_size=args.batch, num_workers=workers, image_size=args.size)
        dm.setup()
        batches = dm.train_dataloader()
        _epoch_images(batches, device)  # workers start, caches warm
        t0 = time.perf_counter()
        n = sum(_epoch_images(batches, device) for _ in range(args.epochs))
        feed = n / (time.perf_counter() - t0)
    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=1000, width=args.width, input_size=args.size,
                      binarize=preset("paper")).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    step = make_step_for(net, device, args.batch, args.size, 1000, bf16=device.type == "cuda")
    times = interleaved({"step": step}, args.repeats, warmup=3)["step"]
    consume = args.batch / statistics.median(times)
    return {"machine": machine(), "device": _device_name(device), "workers": workers, "jpeg_size": args.jpeg_size,
            "crop": args.size, "batch": args.batch, "loader_images_per_s": feed,
            "resnet18_step_images_per_s": consume, "loader_over_model": feed / consume}


def _epoch_images(batches, device) -> int:
    n = 0
    for x, _ in batches:
        n += len(x.to(device, non_blocking=True))
    _sync(device)
    return n


def make_step_for(net, device, batch: int, size: int, classes: int, bf16: bool):
    """A training step of ``net`` (channels_last on CUDA) on one fixed random batch."""
    opt = torch.optim.Adam(param_groups(net, 0.0), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        project_(net)
        _sync(device)
    return step


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def summary(out: Path) -> str:
    """A Markdown summary of a gpu.sh result folder."""
    lines = [f"# benchmarks/gpu.sh: {out}", ""]
    for name in ("device.txt", "cuda_tests.txt"):
        if (out / name).is_file():
            lines += [f"## {name}", "```", (out / name).read_text().strip()[-3000:], "```", ""]
    for name in ("step_time.json", "loader.json", "epochs.json", "imagefolder.json"):
        if (out / name).is_file():
            lines += [f"## {name}", "```json", (out / name).read_text().strip(), "```", ""]
    metrics = out / "paper_run" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        lines += ["## paper recipe (VGG-Small, CIFAR-10 decoded from JPEG: not comparable with published numbers)",
                  f"{m['epochs']} epochs: test top-1 {100 * m['test_acc_top1']:.2f}% "
                  f"(the paper: 92.3% after its full schedule on the original CIFAR-10), "
                  f"train time {m['train_time_s']:.0f} s", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step-time")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--bf16", type=lambda v: v == "true", default=None, help="true|false (default: on CUDA)")
    s.add_argument("--json", required=True)
    lo = sub.add_parser("loader")
    lo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    lo.add_argument("--data", required=True, help="a CIFAR-10 folder (npz, pickle batches or jpeg_bytes.npz)")
    lo.add_argument("--batch", type=int, default=128)
    lo.add_argument("--workers", type=int, default=4)
    lo.add_argument("--subset", type=int, default=0, help="images of the training split (0: all)")
    lo.add_argument("--epochs", type=int, default=2)
    lo.add_argument("--warmup-epochs", type=int, default=1)
    lo.add_argument("--json", required=True)
    im = sub.add_parser("imagefolder")
    im.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    im.add_argument("--data", required=True, help="a CIFAR-10 folder (the images' source)")
    im.add_argument("--images", type=int, default=2048)
    im.add_argument("--jpeg-size", type=int, default=400)
    im.add_argument("--size", type=int, default=224)
    im.add_argument("--batch", type=int, default=256)
    im.add_argument("--width", type=float, default=1.0)
    im.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: one per core)")
    im.add_argument("--epochs", type=int, default=2)
    im.add_argument("--repeats", type=int, default=10)
    im.add_argument("--json", required=True)
    su = sub.add_parser("summary")
    su.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "summary":
        print(summary(Path(args.out)))
        return
    result = {"step-time": step_time, "loader": loader, "imagefolder": imagefolder}[args.cmd](args)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
