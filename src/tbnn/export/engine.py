"""Run a packed model on the CPU from its file alone: binary layers as XNOR-popcount over
packed words (tbnn.export.kernels), full-precision layers with torch.nn.functional."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..binarize.surrogates import sign_pm1
from . import kernels
from .format import PackedFormatError, read_packed

_FLOAT_ACTS = {"identity": lambda x: x, "relu": F.relu, "hardtanh": F.hardtanh,
               "sign": sign_pm1}


@dataclass
class Bits:
    """Signs packed along channels: ``words`` is (N, H, W, ceil(C/64)) or (N, ceil(C/64))."""
    words: np.ndarray
    channels: int


def _pack_float(x: torch.Tensor) -> Bits:
    neg = (x < 0).numpy()
    if neg.ndim == 4:
        neg = neg.transpose(0, 2, 3, 1)
    return Bits(kernels.pack_signs(neg), x.shape[1])


class PackedModel:
    """A model loaded from a ``.tbnn`` file. Call it on a float NCHW batch (preprocessed as
    for the PyTorch model) to get logits; ``run(x, record=True)`` also returns the integer
    result of every binary layer (N, C, H, W) keyed by layer name."""

    def __init__(self, header: dict, tensors: dict[str, np.ndarray]):
        self.meta, self.nodes, self.output = header["meta"], header["nodes"], header["output"]
        self._np = tensors
        self._t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()
                   if v.dtype.kind == "f"}
        known = {"input", "conv2d", "linear", "batchnorm", "maxpool2d", "adaptive_avgpool2d", "flatten",
                 "identity", "relu", "hardtanh", "add", "bconv2d", "blinear"}
        for n in self.nodes:
            if n.get("op") not in known:
                raise PackedFormatError(f"node {n.get('name')!r}: unknown op {n.get('op')!r}")
            fold = n["attrs"].get("fold") or {}
            for field, key in [*((f, n["attrs"].get(f)) for f in ("weight", "bias", "scale", "weight_bits",
                                                                  "running_mean", "running_var")),
                               *((f, fold.get(f)) for f in ("threshold", "mode"))]:
                if key is not None and key not in tensors:
                    raise PackedFormatError(f"node {n['name']!r}: tensor {key!r} ({field}) missing")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False, timings: dict | None = None):
        """(logits, counts): ``counts`` holds each binary layer's integer result when ``record``;
        ``timings``, if given, is filled with seconds per op type (for benchmarks)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        values: dict[str, object] = {}
        counts: dict[str, np.ndarray] = {}
        for n in self.nodes:
            ins = [values[i] for i in n["inputs"]]
            t0 = time.perf_counter()
            values[n["name"]] = self._node(n, x if n["op"] == "input" else None, ins, counts if record else None)
            if timings is not None:
                timings[n["op"]] = timings.get(n["op"], 0.0) + time.perf_counter() - t0
        return values[self.output], counts

    def _float(self, v) -> torch.Tensor:
        if isinstance(v, Bits):
            raise PackedFormatError("a float layer reads the bits of a folded binary layer: inconsistent graph")
        return v

    def _node(self, n, x, ins, counts):
        op, a = n["op"], n["attrs"]
        t = self._t
        if op == "input":
            return x
        if op in ("bconv2d", "blinear"):
            return self._binary(n, ins[0], counts)
        v = self._float(ins[0]) if ins else None
        if op == "conv2d":
            v = _FLOAT_ACTS[a["input_act"]](v)
            return F.conv2d(v, t[a["weight"]], t[a["bias"]] if a["bias"] else None, a["stride"], a["padding"],
                            a["dilation"], a["groups"])
        if op == "linear":
            return F.linear(_FLOAT_ACTS[a["input_act"]](v), t[a["weight"]], t[a["bias"]] if a["bias"] else None)
        if op == "batchnorm":
            return F.batch_norm(v, t[a["running_mean"]], t[a["running_var"]], t[a["weight"]], t[a["bias"]],
                                False, 0.0, a["eps"])
        if op == "maxpool2d":
            return F.max_pool2d(v, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        if op == "adaptive_avgpool2d":
            return F.adaptive_avg_pool2d(v, a["output_size"])
        if op == "flatten":
            return v.flatten(a["start_dim"], a["end_dim"])
        if op == "relu":
            return F.relu(v)
        if op == "hardtanh":
            return F.hardtanh(v, a["min_val"], a["max_val"])
        if op == "add":
            return v + self._float(ins[1])
        return v  # identity

    def _binary(self, n, v, counts):
        a = n["attrs"]
        bits = v if isinstance(v, Bits) else _pack_float(v)
        if bits.channels != a["in_channels"]:
            raise PackedFormatError(f"node {n['name']!r}: input has {bits.channels} channels, layer expects "
                                    f"{a['in_channels']}")
        w = self._np[a["weight_bits"]]
        if n["op"] == "bconv2d":
            c = kernels.binary_conv(bits.words, w, a["in_channels"], a["stride"][0], a["padding"][0])
        else:
            c = kernels.binary_gemm(bits.words, w, a["in_channels"])
        if counts is not None:
            counts[n.get("layer", n["name"])] = c.transpose(0, 3, 1, 2) if c.ndim == 4 else c
        fold = a.get("fold")
        if fold is None:
            out = torch.from_numpy(c).float()
            out = out.permute(0, 3, 1, 2) if out.ndim == 4 else out
            shape = (1, -1, 1, 1) if out.ndim == 4 else (1, -1)
            out = out * self._t[a["scale"]].view(shape)
            return out + self._t[a["bias"]].view(shape) if a["bias"] else out
        if fold["pool"] is not None:  # max-pool of integers (exact in float32 below 2^24)
            p = fold["pool"]
            pooled = F.max_pool2d(torch.from_numpy(c).permute(0, 3, 1, 2).float(), p["kernel_size"], p["stride"],
                                  p["padding"], p["dilation"], p["ceil_mode"])
            c = pooled.permute(0, 2, 3, 1).numpy()
        thr, mode = self._np[fold["threshold"]], self._np[fold["mode"]]
        neg = np.where(mode == 0, c < thr, np.where(mode == 1, c > thr, mode == 2))
        return Bits(kernels.pack_signs(neg), neg.shape[-1])


def load(path: str | Path) -> PackedModel:
    """Load a ``.tbnn`` file written by ``tbnn.export.export``; checks version and checksum."""
    header, tensors = read_packed(path)
    return PackedModel(header, tensors)
