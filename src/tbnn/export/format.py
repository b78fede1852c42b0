"""The packed file (``.tbnn``): one file holding a model's graph and its tensors.

Layout (all integers little-endian)::

    b"TBNN"  magic
    u16      format version (FORMAT_VERSION)
    u16      reserved (0)
    u64      header length H
    H bytes  header, UTF-8 JSON: {"meta": {...}, "nodes": [...], "output": name,
             "tensors": {name: {"dtype", "shape", "offset", "nbytes"}}}
    padding  to a multiple of 64 bytes
    data     the tensors, each at its offset (relative to the data start), 64-byte aligned
    32 bytes SHA-256 of everything above

Files are written to a temporary name and renamed, so a failed export leaves nothing
half-written, and read back with every field checked: ``read_packed`` checks the container
(magic, version, checksum, the tensor table), ``check_graph`` the graph in the header against
its tensors (the ``ATTRS`` and ``TENSORS`` tables say what each op needs).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import PackedFormatError

MAGIC = b"TBNN"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHHQ")
_ALIGN = 64
_DIGEST = 32  # SHA-256, at the end
_DTYPES = {"uint64", "float32", "float16", "float64", "int8", "int32"}


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a size


def _show(v) -> str:
    """A value for a message, cut short: a broken header can hold anything."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _layout(header: dict, tensors: dict[str, np.ndarray]) -> tuple[bytes, list, int]:
    """(header bytes with the tensor table, [(offset, array)], body length): the file without its checksum."""
    table, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise PackedFormatError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored")
        table[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes}
        blobs.append((offset, arr))
        offset = _align(offset + arr.nbytes)
    head = json.dumps({**header, "tensors": table}, separators=(",", ":")).encode()
    return head, blobs, _align(_PREFIX.size + len(head)) + offset


def packed_size(header: dict, tensors: dict[str, np.ndarray]) -> int:
    """The size in bytes of the file ``write_packed(path, header, tensors)`` writes, without
    writing it (the layout is computed, the tensor data not copied)."""
    return _layout(header, tensors)[2] + _DIGEST


def tensor_bytes(arr: np.ndarray) -> int:
    """The bytes one tensor takes in the file (its data, padded to the alignment)."""
    return _align(arr.nbytes)


def write_packed(path: str | Path, header: dict, tensors: dict[str, np.ndarray]) -> int:
    """Write atomically; returns the file size in bytes."""
    head, blobs, body = _layout(header, tensors)
    data_start = _align(_PREFIX.size + len(head))
    buf = bytearray(body)
    buf[: _PREFIX.size] = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head))
    buf[_PREFIX.size: _PREFIX.size + len(head)] = head
    for off, arr in blobs:
        buf[data_start + off: data_start + off + arr.nbytes] = arr.tobytes()
    buf += hashlib.sha256(buf).digest()
    atomic_write(Path(path), buf)
    return len(buf)


def read_packed(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a packed file, after checking magic, version, checksum and every
    tensor's table entry and bounds; raises PackedFormatError naming what is wrong. The graph
    itself is checked by ``check_graph``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PackedFormatError(f"{path}: cannot read ({e.strerror})") from e
    if len(raw) < _PREFIX.size + _DIGEST:
        raise PackedFormatError(f"{path}: truncated ({len(raw)} bytes is shorter than any packed model)")
    magic, version, _, head_len = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise PackedFormatError(f"{path}: not a tbnn packed model (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise PackedFormatError(f"{path}: format version {version}; this tbnn reads version {FORMAT_VERSION} "
                                "(re-export the checkpoint with this version)")
    body, digest = raw[:-_DIGEST], raw[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise PackedFormatError(f"{path}: checksum mismatch: the file is corrupted or truncated")
    try:
        header = json.loads(body[_PREFIX.size: _PREFIX.size + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackedFormatError(f"{path}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise PackedFormatError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    for key in ("meta", "nodes", "output", "tensors"):
        if key not in header:
            raise PackedFormatError(f"{path}: header field {key!r} missing")
    if not isinstance(header["tensors"], dict):
        raise PackedFormatError(f"{path}: header field 'tensors' must be an object, got {_show(header['tensors'])}")
    data_start = _align(_PREFIX.size + head_len)
    tensors = {}
    for name, entry in header["tensors"].items():
        problem = _table_problem(entry, data_start, len(body))
        if problem:
            raise PackedFormatError(f"{path}: tensor {name!r}: {problem}")
        shape = tuple(entry["shape"])
        tensors[name] = np.frombuffer(body, dtype=entry["dtype"], count=math.prod(shape),
                                      offset=data_start + entry["offset"]).reshape(shape)
    return header, tensors


def _table_problem(entry, data_start: int, body_len: int) -> str | None:
    """What is wrong with one entry of the tensor table, if anything."""
    if not isinstance(entry, dict):
        return f"bad table entry {_show(entry)}"
    dtype, shape, offset, nbytes = (entry.get(k) for k in ("dtype", "shape", "offset", "nbytes"))
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return f"dtype must be one of {sorted(_DTYPES)}, got {_show(dtype)}"
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return f"shape must be a list of non-negative ints, got {_show(shape)}"
    # Offsets are 64-byte aligned by the writer; an unaligned one is not a file it wrote.
    if not _is_int(offset) or offset < 0 or offset % _ALIGN:
        return f"offset must be a non-negative multiple of {_ALIGN}, got {_show(offset)}"
    if not _is_int(nbytes) or nbytes != np.dtype(dtype).itemsize * math.prod(shape) or \
            data_start + offset + nbytes > body_len:
        return "dtype/shape/offset inconsistent with the file"
    return None
