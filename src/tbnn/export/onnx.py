"""ONNX export of the float-simulated trained model (sign and scales as float ops), for
interoperability with other runtimes; one self-contained file (weights inside), written
atomically, its outputs checked against PyTorch."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` (eval mode) as a self-contained ONNX model with a dynamic batch dimension."""
    import onnx

    x = torch.randn(2, *input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model.eval(), (x,), path, input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False, external_data=False)
        # load_external_data folds any sidecar weights back in, whatever the exporter chose
        return onnx.load(path, load_external_data=True).SerializeToString()


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], check: bool = True) -> float | None:
    """Write ``model`` to ``path`` as ONNX. With ``check`` (and onnxruntime installed) returns
    the max |logit difference| against PyTorch on a random batch; None without onnxruntime."""
    data = onnx_bytes(model, input_shape)
    atomic_write(path, data)
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(4, *input_shape)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(ref - got).max())
