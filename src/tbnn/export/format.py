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
half-written, and read back with every field checked.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

MAGIC = b"TBNN"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHHQ")
_ALIGN = 64
_DTYPES = {"uint64", "float32", "float16", "float64", "int8", "int32"}


class PackedFormatError(ValueError):
    """The file is not a valid packed model; the message names the field or check that failed."""


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write_packed(path: str | Path, header: dict, tensors: dict[str, np.ndarray]) -> int:
    """Write atomically; returns the file size in bytes."""
    path = Path(path)
    table, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise PackedFormatError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored")
        table[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes}
        blobs.append((offset, arr))
        offset = _align(offset + arr.nbytes)
    head = json.dumps({**header, "tensors": table}, separators=(",", ":")).encode()
    data_start = _align(_PREFIX.size + len(head))
    buf = bytearray(data_start + offset)
    buf[: _PREFIX.size] = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head))
    buf[_PREFIX.size: _PREFIX.size + len(head)] = head
    for off, arr in blobs:
        buf[data_start + off: data_start + off + arr.nbytes] = arr.tobytes()
    buf += hashlib.sha256(buf).digest()
    atomic_write(path, buf)
    return len(buf)


def read_packed(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a packed file, after checking magic, version, checksum and every
    tensor's bounds; raises PackedFormatError naming what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PackedFormatError(f"{path}: cannot read ({e.strerror})") from e
    if len(raw) < _PREFIX.size + 32:
        raise PackedFormatError(f"{path}: truncated ({len(raw)} bytes is shorter than any packed model)")
    magic, version, _, head_len = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise PackedFormatError(f"{path}: not a tbnn packed model (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise PackedFormatError(f"{path}: format version {version}; this tbnn reads version {FORMAT_VERSION} "
                                "(re-export the checkpoint with this version)")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise PackedFormatError(f"{path}: checksum mismatch: the file is corrupted or truncated")
    try:
        header = json.loads(body[_PREFIX.size: _PREFIX.size + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackedFormatError(f"{path}: header is not valid JSON ({e})") from e
    for key in ("meta", "nodes", "output", "tensors"):
        if key not in header:
            raise PackedFormatError(f"{path}: header field {key!r} missing")
    data_start = _align(_PREFIX.size + head_len)
    tensors = {}
    for name, t in header["tensors"].items():
        try:
            dtype, shape, off, nbytes = np.dtype(t["dtype"]), tuple(t["shape"]), int(t["offset"]), int(t["nbytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise PackedFormatError(f"{path}: tensor {name!r}: bad table entry ({e})") from e
        if t["dtype"] not in _DTYPES or nbytes != dtype.itemsize * int(np.prod(shape)) or \
                data_start + off + nbytes > len(body) or off < 0:
            raise PackedFormatError(f"{path}: tensor {name!r}: dtype/shape/offset inconsistent with the file")
        tensors[name] = np.frombuffer(body, dtype=dtype, count=int(np.prod(shape)),
                                      offset=data_start + off).reshape(shape)
    return header, tensors
