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
from .format import FORMAT_VERSION, packed_size, tensor_bytes, write_packed


def _packed(model: nn.Module, meta: dict | None, half: bool) -> tuple[dict, dict]:
    """(header, tensors) of the file of ``model``."""
    nodes, output, tensors = export_graph(model, half=half)
    return {"meta": {**(meta or {}), "float16": half}, "nodes": nodes, "output": output}, tensors


def export(model: nn.Module, path: str | Path, meta: dict | None = None, half: bool = False) -> int:
    """Write ``model`` as a packed ``.tbnn`` file: binary layers as bits (1 bit a weight),
    their scales folded into one factor per output channel, every binary layer -> [max-pool]
    -> BatchNorm -> sign chain folded into integer thresholds; written atomically.

    Args:
        model: a tbnn model (binary layers from ``tbnn.binarize``, the layers of
            ``exporter.MODULE_OPS``); exported with eval-mode semantics, its own mode kept.
        path: the file to write (a partial file never replaces an existing one).
        meta: what the file records for its users (``in_channels``, ``input_size``,
            ``num_classes``, ``mean``/``std``, ...): the engine checks inputs against it.
        half: store the full-precision layers' weights as float16 (computed in float32 after
            loading; BatchNorm, scales and thresholds stay float32/64). Not exact: rounding
            moves values that sit near a sign threshold.

    Returns:
        the file's size in bytes.

    Raises:
        ExportError: a layer the format cannot hold, named (nothing is written).
    """
    return write_packed(path, *_packed(model, meta, half))


def file_sizes(model: nn.Module, meta: dict | None = None, half: bool = False) -> tuple[int, dict[str, int]]:
    """(bytes, bytes per layer) of the file ``export(model, path, meta, half)`` writes, without
    writing it (the graph is built and laid out, its data not copied). A layer's bytes are its
    tensors' (aligned); a BatchNorm folded into a binary layer's thresholds has none (the
    thresholds are that layer's); the rest of the file is its header and checksum. Raises
    ExportError for a model the format cannot hold, as ``export`` does."""
    header, tensors = _packed(model, meta, half)
    layers: dict[str, int] = {}
    for node in header["nodes"]:
        names = _tensor_refs(node["attrs"], tensors)
        layers[node.get("layer", node["name"])] = sum(tensor_bytes(tensors[n]) for n in names)
    return packed_size(header, tensors), layers


def _tensor_refs(attrs: dict, tensors: dict) -> list[str]:
    """The tensors a node's attributes name (its folded thresholds included)."""
    refs = []
    for v in attrs.values():
        if isinstance(v, dict):
            refs += _tensor_refs(v, tensors)
        elif isinstance(v, str) and v in tensors:
            refs.append(v)
    return refs


__all__ = ["export", "load", "file_sizes", "PackedModel", "ExportError", "PackedFormatError", "FORMAT_VERSION"]
