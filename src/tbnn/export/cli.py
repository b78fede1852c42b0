"""What src/export.py runs: checkpoint -> packed file (+ ONNX), checked on reload.

Every output path is checked before anything is written (``tbnn.paths``): an existing file is
replaced only with ``overwrite=true`` and only if it is a packed file (or an ONNX file for
``onnx=``). The normalisation and input shape come from the checkpoint's run record. The packed file is
reloaded and must predict as the PyTorch model on random inputs; if it does not, the file is
removed and the export fails, unless the export is lossy by request (``fp16=true``) or the
user explicitly keeps it (``allow_mismatch=true``).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import ExportError
from ..module import load_module
from ..paths import check_outputs
from . import export, load
from .format import MAGIC
from .onnx import export_onnx


def _starts_with(prefix: bytes):
    def test(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    return test


def _is_onnx_model(path: Path) -> bool:
    """An ONNX model with a graph of at least one node (any protobuf parses as some ModelProto)."""
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # noqa: BLE001  anything that does not parse is not one
        return False


#: what out= and onnx= may replace (with overwrite=true)
OUTPUT_KINDS = {"out": ("a packed tbnn file", _starts_with(MAGIC)), "onnx": ("an ONNX model", _is_onnx_model)}


def _state_dict_bytes(module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def _agreement(packed, net, shape: tuple, batches: int) -> tuple[int, int]:
    torch.manual_seed(0)
    agree = total = 0
    for _ in range(batches):
        x = torch.randn(16, *shape)
        with torch.no_grad():
            agree += int((packed(x).argmax(1) == net(x).argmax(1)).sum())
        total += 16
    return agree, total


def export_checkpoint(cfg) -> dict:
    from ..config import ExportConfig, validate_config

    validate_config(cfg, ExportConfig)
    out = Path(cfg.out)
    check_outputs({"ckpt_path": cfg.ckpt_path}, {"out": out, "onnx": cfg.onnx}, kinds=OUTPUT_KINDS,
                  overwrite=cfg.overwrite)
    module, _ = load_module(cfg.ckpt_path)
    record = module.record
    net = module.net.eval()
    shape = (record.in_channels, record.input_size, record.input_size)
    meta = {"model": record.model, "binarize": dict(record.binarize), "num_classes": record.num_classes,
            "in_channels": record.in_channels, "input_size": record.input_size, "checkpoint": str(cfg.ckpt_path),
            "data": record.data_name}
    if record.data.get("mean") is not None:
        meta.update(mean=list(record.data["mean"]), std=list(record.data["std"]))
    # written beside out and checked there; only a checked file replaces out (a failed check leaves
    # an existing out as it was)
    staged = out.with_name(f".{out.name}.checking")
    try:
        size = export(net, staged, meta=meta, half=cfg.fp16)
        agree, total = _agreement(load(staged), net, shape, cfg.check_batches)
        if agree < total and not (cfg.fp16 or cfg.allow_mismatch):
            raise ExportError(
                f"the packed model predicts as the PyTorch model on only {agree}/{total} random inputs; nothing was "
                f"written to {out}. An exact export disagrees only where a float residual sum of a ResNet lies within "
                "float rounding of a sign threshold (measured: at most a few images in 10,000; README), never on "
                "this many: please report it (allow_mismatch=true keeps such a file)")
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    print(f"wrote {out}: {size:,} bytes")
    ckpt_bytes = Path(cfg.ckpt_path).stat().st_size
    weights_bytes = _state_dict_bytes(net)
    print(f"checkpoint file {ckpt_bytes:,} bytes ({ckpt_bytes / size:.1f}x larger; includes optimiser state); "
          f"float32 state dict {weights_bytes:,} bytes ({weights_bytes / size:.1f}x larger)")
    print(f"reloaded and checked: {agree}/{total} random inputs predicted as by the PyTorch model"
          + (" (float16 weights: not exact by design)" if cfg.fp16 and agree < total else ""))
    result = {"bytes_packed_file": size, "bytes_checkpoint": ckpt_bytes, "bytes_state_dict": weights_bytes,
              "check_agree": agree, "check_total": total}
    if cfg.onnx:
        diff = export_onnx(net, cfg.onnx, shape)
        check = f"max |logit diff| vs PyTorch {diff:.2e}" if diff is not None else "unchecked (no onnxruntime)"
        print(f"wrote {cfg.onnx} (ONNX, float-simulated, self-contained): {check}")
        result["onnx_max_abs_diff"] = diff
    return result
