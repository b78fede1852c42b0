"""What a train or eval job leaves: ``metrics.json`` (written atomically) and the report it
prints (accuracy, model size, wall time, and the outputs that exist)."""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text
from .layout import HYDRA_DIR, LOG_DIRS, METRICS
from .summary import summarize


def size_fields(net, in_channels: int, input_size: int) -> dict:
    """Parameter counts, float32 and packed bytes, MACs of ``net`` for one input."""
    return summarize(net, (in_channels, input_size, input_size)).as_dict()


def print_model_summary(sizes: dict, model_cfg: dict) -> None:
    """tbnn's model summary at the start of a run, in place of Lightning's (which counts no
    binary operations and prints "Total FLOPs: 0"): parameters, MACs and sizes of ``size_fields``."""
    macs = sizes["macs_binary"] + sizes["macs_float"]
    print(f"model: {model_cfg['name']} (width {model_cfg['width']:g}): {sizes['params_total']:,} parameters "
          f"({sizes['params_binary']:,} binary); {macs / 1e6:.1f} M multiply-accumulates per image, "
          f"{sizes['macs_binary'] / max(macs, 1):.1%} binary ({sizes['macs_binary'] / 1e6:.1f} M binary, "
          f"{sizes['macs_float'] / 1e6:.1f} M float); {sizes['bytes_float32'] / 2**20:.3f} MiB as float32, "
          f"{sizes['bytes_packed'] / 2**20:.3f} MiB packed. Per layer: python -m tbnn.summary {model_cfg['name']}")


def first_metric(results: list[dict], key: str):
    for r in results or []:
        if key in r:
            return float(r[key])
    return None


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2, default=str) + "\n")


def print_report(m: dict) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(f"\n{m['run_name']}: test top-1 {pct(m.get('test_acc_top1'))} (top-5 {pct(m.get('test_acc_top5'))}), "
          f"val top-1 {pct(m.get('val_acc_top1'))}")
    if m.get("evaluated_on_other_data"):
        print(f"trained on {m['trained_on']}, evaluated on {m['evaluated_on']}")
    print(f"model size: {m['bytes_float32'] / 2**20:.3f} MiB as float32, {m['bytes_packed'] / 2**20:.3f} MiB packed "
          f"({m['bytes_float32'] / max(1, m['bytes_packed']):.1f}x smaller; {m['params_binary']:,} of "
          f"{m['params_total']:,} parameters binary)")
    if "wall_time_s" in m:
        print(f"wall time: {m['wall_time_s']:.1f} s")
    run = Path(m["run_dir"])
    made = [name + ("/" if (run / name).is_dir() else "") for name in
            (METRICS, "checkpoints", HYDRA_DIR, *LOG_DIRS)
            if (run / name).exists() and not ((run / name).is_dir() and not any((run / name).iterdir()))]
    print(f"outputs: {run} ({', '.join(made)})")
