"""XNOR-popcount kernels on bit-packed tensors.

Encoding: a binary value is one bit, 1 for -1 and 0 for +1, so that the product of two
values is -1 exactly where their bits differ: ``dot = n - 2 * popcount(a ^ w)`` over n
bits. Activations are packed along channels, NHWC: ``(N, H, W, ceil(C/64))`` uint64 words;
a weight as ``(O, kh, kw, ceil(C/64))``. The unused high bits of the last word are 0 in
both, so they never count. Zero padding (what the trained model saw: sign(x) padded with
0, not with +-1) is handled exactly by skipping the padded taps.

numba kernels (LLVM's ctpop, i.e. the POPCNT / VPOPCNTQ instructions) when numba imports;
else numpy with ``np.bitwise_count`` (slower; same results).
"""
from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange, types
    from numba.extending import intrinsic

    @intrinsic
    def _popcount64(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])
        return types.int64(types.uint64), codegen  # an int64 count, so sums stay integers

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by BACKEND="numpy"
    HAVE_NUMBA = False

#: the default backend, "numba" or "numpy" (each kernel also takes ``backend=``).
BACKEND = "numba" if HAVE_NUMBA else "numpy"


def words(channels: int) -> int:
    return (channels + 63) // 64


def pack_signs(neg: np.ndarray) -> np.ndarray:
    """Pack a boolean array (True = -1) along its last axis into uint64 words."""
    c = neg.shape[-1]
    pad = words(c) * 64 - c
    if pad:
        neg = np.concatenate([neg, np.zeros((*neg.shape[:-1], pad), dtype=bool)], axis=-1)
    bytes_ = np.packbits(neg, axis=-1, bitorder="little")
    return np.ascontiguousarray(bytes_).view(np.uint64)


if HAVE_NUMBA:
    @njit(parallel=True, cache=True)
    def _conv_nb(x, w, channels, stride, pad, ho, wo):
        # Per output pixel: gather its taps' words into one row (0 = +1 for a padded tap);
        # then, word by word, XOR-popcount it against all output channels at once (weights
        # laid out word-major, so the inner loop over channels vectorises, e.g. to VPOPCNTQ);
        # finally take back what the padded taps added (popcount of their weight words).
        n_img, h, wd, cw = x.shape
        o_ch, kh, kw, _ = w.shape
        taps = kh * kw
        k = taps * cw
        wt = np.ascontiguousarray(w.reshape(o_ch, k).T)            # (k, O)
        wpc = np.zeros((taps, o_ch), np.int64)
        for t in range(taps):
            for c in range(cw):
                for o in range(o_ch):
                    wpc[t, o] += _popcount64(wt[t * cw + c, o])
        out = np.empty((n_img, ho, wo, o_ch), np.int32)
        for row in prange(n_img * ho):
            n = row // ho
            oy = row % ho
            col = np.zeros(k, np.uint64)
            padded = np.zeros(taps, np.bool_)
            acc = np.zeros(o_ch, np.int64)
            for ox in range(wo):
                valid = 0
                for ky in range(kh):
                    iy = oy * stride - pad + ky
                    for kx in range(kw):
                        ix = ox * stride - pad + kx
                        t = ky * kw + kx
                        inside = 0 <= iy < h and 0 <= ix < wd
                        padded[t] = not inside
                        valid += inside
                        for c in range(cw):
                            col[t * cw + c] = x[n, iy, ix, c] if inside else np.uint64(0)
                acc[:] = 0
                for j in range(k):
                    cj = col[j]
                    for o in range(o_ch):
                        acc[o] += _popcount64(cj ^ wt[j, o])
                if valid < taps:
                    for t in range(taps):
                        if padded[t]:
                            for o in range(o_ch):
                                acc[o] -= wpc[t, o]
                for o in range(o_ch):
                    out[n, oy, ox, o] = valid * channels - 2 * acc[o]
        return out

    @njit(parallel=True, cache=True)
    def _gemm_nb(x, w, n_bits):
        m, kw = x.shape
        o_ch = w.shape[0]
        out = np.empty((m, o_ch), np.int32)
        for i in prange(m):
            for o in range(o_ch):
                acc = 0
                for k in range(kw):
                    acc += _popcount64(x[i, k] ^ w[o, k])
                out[i, o] = n_bits - 2 * acc
        return out


def _conv_np(x, w, channels, stride, pad, ho, wo):
    n_img, h, wd, cw = x.shape
    o_ch, kh, kw, _ = w.shape
    xp = np.zeros((n_img, h + 2 * pad, wd + 2 * pad, cw), np.uint64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    valid = np.zeros((h + 2 * pad, wd + 2 * pad), np.int32)
    valid[pad:pad + h, pad:pad + wd] = 1
    out = np.zeros((n_img, ho, wo, o_ch), np.int64)
    ys, xs = np.arange(ho) * stride, np.arange(wo) * stride
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, ys[:, None] + ky, xs[None, :] + kx]          # N, Ho, Wo, Cw
            mask = valid[ys[:, None] + ky, xs[None, :] + kx]        # Ho, Wo
            pc = np.bitwise_count(tap[..., None, :] ^ w[None, None, None, :, ky, kx]).sum(-1)
            out += mask[None, :, :, None] * (channels - 2 * pc.astype(np.int64))
    return out.astype(np.int32)


def binary_conv(x: np.ndarray, w: np.ndarray, channels: int, stride: int, pad: int,
                backend: str | None = None) -> np.ndarray:
    """Integer conv of packed signs: ``(N, Ho, Wo, O)`` int32 = conv(sign(x), sign(W)) with zero padding."""
    _, h, wd, _ = x.shape
    _, kh, kw, _ = w.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    if (backend or BACKEND) == "numba":
        return _conv_nb(x, w, channels, stride, pad, ho, wo)
    return _conv_np(x, w, channels, stride, pad, ho, wo)


def binary_gemm(x: np.ndarray, w: np.ndarray, n_bits: int, backend: str | None = None) -> np.ndarray:
    """``(M, O)`` int32 = sign(x) @ sign(W).T from packed ``(M, Kw)`` and ``(O, Kw)`` words."""
    if (backend or BACKEND) == "numba":
        return _gemm_nb(x, w, n_bits)
    pc = np.bitwise_count(x[:, None, :] ^ w[None, :, :]).sum(-1)
    return (n_bits - 2 * pc.astype(np.int64)).astype(np.int32)
