"""ONNX export of the float-simulated trained model (sign and scales as float ops), for
interoperability with other runtimes; the outputs are checked against PyTorch."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], check: bool = True) -> float | None:
    """Write ``model`` (eval mode) to ONNX with a dynamic batch dimension. With ``check``
    (and onnxruntime installed) returns the max |logit difference| against PyTorch on a
    random batch; None when onnxruntime is unavailable."""
    path = Path(path)
    model = model.eval()
    x = torch.randn(4, *input_shape)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(ref - got).max())
