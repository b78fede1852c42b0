"""Helpers shared by the benchmark scripts: machine description and robust timing."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

# The instruction-set flags that decide the speed of tbnn's kernels and of its peers' (int8, bf16).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "avx512_bf16", "avx_vnni")


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return None


def cpu_model() -> str:
    """The model name, with family and model numbers (virtual machines often say only "AMD EPYC":
    family 25 model 1 is Zen 3, family 25 model 17 is Zen 4)."""
    name = _cpuinfo("model name") or platform.processor() or "cpu"
    family, model = _cpuinfo("cpu family"), _cpuinfo("model\t")
    return f"{name} (family {family}, model {model})" if family and model else name


def isa() -> list[str]:
    """This CPU's flags among ISA_FLAGS (from /proc/cpuinfo; empty where it is not readable)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [f for f in ISA_FLAGS if f in flags]


def machine() -> str:
    return (f"{cpu_model()} ({' '.join(isa()) or 'ISA unknown'}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, Python {platform.python_version()}")


def machine_fields() -> dict:
    """The machine as JSON fields, for every benchmark's output."""
    return {"cpu": cpu_model(), "isa": isa(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "machine": machine()}


def warm(*models, batches: int = 3) -> None:
    """Run random CIFAR-size batches through ``models`` in training mode, then set them to eval:
    BatchNorm statistics that are not the initial ones (one input shared by all models)."""
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(32, 3, 32, 32)
            for m in models:
                m.train()(x)
    for m in models:
        m.eval()


def packed(model, meta: dict | None = None):
    """``model`` exported to a packed file and loaded back (the file is read whole, then removed)."""
    import tempfile
    from pathlib import Path

    from tbnn.export import export, load

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tbnn"
        export(model, path, meta=meta or {"in_channels": 3, "input_size": 32})
        return load(path)


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, alternating between them so that drifts in the
    machine's speed hit all of them alike. Returns the list of seconds per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def p90(xs) -> float:
    return statistics.quantiles(xs, n=10)[-1] if len(xs) > 1 else xs[0]


if __name__ == "__main__":  # `python benchmarks/common.py`: the machine line, for shell benchmarks
    print(machine())
