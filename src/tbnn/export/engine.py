"""Run a packed model on the CPU from its file alone: binary layers as XNOR-popcount over
packed words (tbnn.export.kernels), full-precision layers with torch.nn.functional.

The graph is checked whole when the model is made (``validate.check_graph``) and the input
when it is called, so a bad input raises DataError and a bad file PackedFormatError; what
the header cannot show (e.g. spatial sizes) is caught while running and also surfaces as
PackedFormatError naming the node."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..binarize.sign import sign_pm1
from ..errors import DataError, PackedFormatError
from . import kernels
from .format import read_packed
from .kernels import Bits
from .plan import Plan, PlanError, with_scale
from .validate import INPUT_ACTS, check_graph

_FLOAT_ACTS = {"identity": lambda x: x, "relu": F.relu, "hardtanh": F.hardtanh, "sign": sign_pm1}
assert set(_FLOAT_ACTS) == set(INPUT_ACTS)  # the format's list and the engine's must not drift apart


def _pack_float(x: torch.Tensor) -> Bits:
    neg = (x < 0).numpy()
    if neg.ndim == 4:
        neg = neg.transpose(0, 2, 3, 1)
    return Bits(kernels.pack_signs(neg), x.shape[1])


class PackedModel:
    """A model loaded from a ``.tbnn`` file. Call it on a float NCHW batch (preprocessed as
    for the PyTorch model) to get logits, through the compiled plan (``tbnn.export.plan``);
    ``run(x, record=True)`` interprets the graph node by node and also returns the integer
    result of every binary layer (N, C, H, W) keyed by layer name. ``source`` (the file)
    starts every error message."""

    def __init__(self, header: dict, tensors: dict[str, np.ndarray], source: str = "packed model"):
        self.source = source
        try:
            self.input = check_graph(header, tensors)
        except PackedFormatError as e:
            raise PackedFormatError(f"{source}: {e}") from None
        self.meta, self.nodes, self.output = header["meta"], header["nodes"], header["output"]
        self._np = tensors
        self._t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()
                   if v.dtype.kind == "f"}
        self.plan = Plan(self)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._checked_input(x)
        try:
            return self.plan(x)
        except PlanError as e:  # see run
            raise self._cannot_run(e.node, x, e.error) from e.error

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False, timings: dict | None = None):
        """(logits, counts): ``counts`` holds each binary layer's integer result when ``record``;
        ``timings``, if given, is filled with seconds per op type (for benchmarks)."""
        x = self._checked_input(x)
        values: dict[str, object] = {}
        counts: dict[str, np.ndarray] = {}
        for n in self.nodes:
            ins = [values[i] for i in n["inputs"]]
            t0 = time.perf_counter()
            try:
                values[n["name"]] = self._node(n, x, ins, counts if record else None)
            except Exception as e:  # noqa: BLE001
                raise self._cannot_run(n, x, e) from e
            if timings is not None:
                timings[n["op"]] = timings.get(n["op"], 0.0) + time.perf_counter() - t0
        return values[self.output], counts

    def _checked_input(self, x) -> torch.Tensor:
        """``x`` as float32, if it is a float N x C x H x W batch of the size the model takes."""
        x = torch.as_tensor(x)
        c, s = self.input.channels, self.input.size
        if not x.is_floating_point() or x.ndim != 4 or c not in (None, x.shape[1]) or \
                s not in (None, x.shape[2]) or s not in (None, x.shape[3]):
            dims = " x ".join(["N", str(c or "C"), str(s or "H"), str(s or "W")])
            raise DataError(f"input of shape {tuple(x.shape)}{'' if x.is_floating_point() else f' ({x.dtype})'}; "
                            f"this model takes {dims} float images ({self.input.source})")
        return x.float()

    def _cannot_run(self, node: dict, x: torch.Tensor, error: Exception) -> PackedFormatError:
        """The header and the input passed their checks, so whatever fails while running (torch,
        numpy, numba: many types) is data of the file that disagree in a way the header cannot
        show, such as a spatial size."""
        unknown = "" if self.input.size else " (the file records no input_size, so the input's size may be the cause)"
        return PackedFormatError(f"{self.source}: node {node['name']!r} ({node['op']}) cannot run on an input of "
                                 f"shape {tuple(x.shape)}: {error}{unknown}")

    def _node(self, n, x, ins, counts):
        op, a = n["op"], n["attrs"]
        t = self._t
        if op == "input":
            return x
        if op in ("bconv2d", "blinear"):
            return self._binary(n, ins[0], counts)
        v = ins[0]
        if op == "conv2d":
            v, padding = _FLOAT_ACTS[a["input_act"]](v), a["padding"]
            if a.get("pad_value"):  # padded with +1 (binarize.pad_value=1), not with zeros
                v, padding = F.pad(v, (padding[1], padding[1], padding[0], padding[0]), value=float(a["pad_value"])), 0
            return F.conv2d(v, t[a["weight"]], t.get(a.get("bias")), a["stride"], padding, a["dilation"], a["groups"])
        if op == "linear":
            return F.linear(_FLOAT_ACTS[a["input_act"]](v), t[a["weight"]], t.get(a.get("bias")))
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
            # torch would broadcast, e.g. (N, C, 1, 1) + (N, C, H, W): never what a residual means.
            if v.shape != ins[1].shape:
                raise ValueError(f"its inputs have shapes {tuple(v.shape)} and {tuple(ins[1].shape)}")
            return v + ins[1]
        return v  # identity

    def _binary(self, n, v, counts):
        a = n["attrs"]
        bits = v if isinstance(v, Bits) else _pack_float(v)
        # Checked before the kernels, which do not bounds-check: more input words than
        # weight words would read past the weights.
        if bits.channels != a["in_channels"]:
            raise ValueError(f"its input has {bits.channels} channels; attrs.in_channels is {a['in_channels']}")
        w = self._np[a["weight_bits"]]
        if n["op"] == "bconv2d":
            stride, pad = a["stride"][0], a["padding"][0]  # the same in both directions (check_graph)
            _, h, wd, _ = bits.words.shape
            if h + 2 * pad < w.shape[1] or wd + 2 * pad < w.shape[2]:
                raise ValueError(f"its {w.shape[1]}x{w.shape[2]} kernel does not fit its {h}x{wd} input "
                                 f"padded by {pad}")
            c = kernels.binary_conv(bits.words, w, a["in_channels"], stride, pad, pad_value=a.get("pad_value") or 0)
        else:
            c = kernels.binary_gemm(bits.words, w, a["in_channels"])
        if counts is not None:
            counts[n.get("layer", n["name"])] = c.transpose(0, 3, 1, 2) if c.ndim == 4 else c
        fold = a.get("fold")
        if fold is None:
            out = torch.from_numpy(c).float()
            out = out.permute(0, 3, 1, 2) if out.ndim == 4 else out
            return with_scale(out, self._t[a["scale"]], self._t[a["bias"]] if a.get("bias") else None)
        if fold.get("pool") is not None:  # max-pool of integers (exact in float32 below 2^24)
            p = fold["pool"]
            pooled = F.max_pool2d(torch.from_numpy(c).permute(0, 3, 1, 2).float(), p["kernel_size"], p["stride"],
                                  p["padding"], p["dilation"], p["ceil_mode"])
            c = pooled.permute(0, 2, 3, 1).numpy()
        thr, mode = self._np[fold["threshold"]], self._np[fold["mode"]]
        neg = np.where(mode == 0, c < thr, np.where(mode == 1, c > thr, mode == 2))
        return Bits(kernels.pack_signs(neg), neg.shape[-1])


def load(path: str | Path) -> PackedModel:
    """Load a ``.tbnn`` file written by ``tbnn.export.export``, after checking the container
    (version, checksum, tensor table) and the whole graph against its tensors.

    Args:
        path: the file; it is read whole and not needed after.

    Returns:
        a ``PackedModel``: call it on a float N x C x H x W batch (normalised as for training,
        ``meta`` has mean/std) for logits; ``run(x, record=True)`` also returns every binary
        layer's integer result.

    Raises:
        PackedFormatError: a truncated, corrupted, wrong-version or inconsistent file, naming
            the field or node (never a bare numpy or torch error).
    """
    header, tensors = read_packed(path)
    return PackedModel(header, tensors, source=str(path))
