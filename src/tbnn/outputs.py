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
