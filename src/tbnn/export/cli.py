"""What src/export.py runs: checkpoint -> packed file (+ ONNX), checked on reload."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from . import export, load
from .onnx import export_onnx


def _state_dict_bytes(module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def export_checkpoint(cfg) -> dict:
    from ..data import DATAMODULES
    from ..pipeline import load_checkpoint

    module = load_checkpoint(cfg.ckpt_path)
    hp = module.hparams
    net = module.net.eval()
    shape = (hp.in_channels, hp.input_size, hp.input_size)
    meta = {"model": hp.model, "binarize": dict(hp.binarize), "num_classes": hp.num_classes,
            "in_channels": hp.in_channels, "input_size": hp.input_size, "checkpoint": str(cfg.ckpt_path)}
    dm = DATAMODULES.get(hp.get("data_name") or "")
    if dm is not None:
        meta.update(data=hp.data_name, mean=list(dm.mean), std=list(dm.std))
    out = Path(cfg.out)
    size = export(net, out, meta=meta, half=cfg.fp16)
    packed = load(out)
    torch.manual_seed(0)
    agree = total = 0
    for _ in range(cfg.check_batches):
        x = torch.randn(16, *shape)
        with torch.no_grad():
            agree += int((packed(x).argmax(1) == net(x).argmax(1)).sum())
        total += 16
    ckpt_bytes = Path(cfg.ckpt_path).stat().st_size
    weights_bytes = _state_dict_bytes(net)
    print(f"wrote {out}: {size:,} bytes")
    print(f"checkpoint file {ckpt_bytes:,} bytes ({ckpt_bytes / size:.1f}x larger; includes optimiser state); "
          f"float32 state dict {weights_bytes:,} bytes ({weights_bytes / size:.1f}x larger)")
    print(f"reloaded and checked: {agree}/{total} random inputs predicted as by the PyTorch model")
    result = {"bytes_packed_file": size, "bytes_checkpoint": ckpt_bytes, "bytes_state_dict": weights_bytes,
              "check_agree": agree, "check_total": total}
    if cfg.onnx:
        diff = export_onnx(net, cfg.onnx, shape)
        check = f"max |logit diff| vs PyTorch {diff:.2e}" if diff is not None else "unchecked (no onnxruntime)"
        print(f"wrote {cfg.onnx} (ONNX, float-simulated): {check}")
        result["onnx_max_abs_diff"] = diff
    return result
