"""Bit-packed export and the CPU XNOR-popcount engine.

    from tbnn.export import export, load
    export(model, "model.tbnn", meta={...})
    logits = load("model.tbnn")(x)
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import ExportError, PackedFormatError
from .engine import PackedModel, load
from .exporter import export_graph
from .format import FORMAT_VERSION, write_packed


def export(model: nn.Module, path: str | Path, meta: dict | None = None, half: bool = False) -> int:
    """Write ``model`` (a tbnn model, eval-mode semantics) as a packed file; returns its size.
    ``half``: store the weights of full-precision layers as float16 (computed in float32 after
    loading; BatchNorm, scales and thresholds stay float32/64). Not exact: rounding moves
    values that sit near a sign threshold."""
    nodes, output, tensors = export_graph(model, half=half)
    header = {"meta": {**(meta or {}), "float16": half}, "nodes": nodes, "output": output}
    return write_packed(path, header, tensors)


__all__ = ["export", "load", "PackedModel", "ExportError", "PackedFormatError", "FORMAT_VERSION"]
