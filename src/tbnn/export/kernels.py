"""XNOR-popcount kernels on bit-packed tensors.

Encoding: a binary value is one bit, 1 for -1 and 0 for +1, so that the product of two
values is -1 exactly where their bits differ: ``dot = n - 2 * popcount(a ^ w)`` over n
bits. Activations are packed along channels, NHWC: ``(N, H, W, ceil(C/64))`` uint64 words;
a weight as ``(O, kh, kw, ceil(C/64))``. The unused high bits of the last word are 0 in
both, so they never count. Zero padding (sign(x) padded with 0, not with +-1: torch's
default) is handled exactly by skipping the padded taps; padding with +1 (``binarize.pad_value=1``)
by counting them, their words being 0.

numba kernels (LLVM's ctpop, i.e. the POPCNT / VPOPCNTQ instructions) when numba imports;
else numpy with ``np.bitwise_count`` (slower; same results).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    from numba import njit, prange, types
    from numba.extending import intrinsic

    @intrinsic
    def _popcount64(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])
        return types.int64(types.uint64), codegen  # an int64 count, so sums stay integers

    from numba import get_num_threads, set_num_threads

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by BACKEND="numpy"
    HAVE_NUMBA = False

    def get_num_threads() -> int:
        return 1

    def set_num_threads(n: int) -> None:
        pass

#: the default backend, "numba" or "numpy" (each kernel also takes ``backend=``).
BACKEND = "numba" if HAVE_NUMBA else "numpy"


@dataclass
class Bits:
    """Signs packed along channels: ``words`` is (N, H, W, ceil(C/64)) or (N, ceil(C/64))."""
    words: np.ndarray
    channels: int


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
    @njit(inline="always")
    def _gather(x, stride, pad, kh, kw, n, oy, ox, col, padded):
        """The taps' words of output pixel (oy, ox) of image n in ``col`` (0 for a padded tap,
        flagged in ``padded``); returns the number of valid taps."""
        _, h, wd, cw = x.shape
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
        return valid

    @njit(parallel=True, cache=True)
    def _conv_nb(x, w, channels, stride, pad, ho, wo, pad_one):
        # Per output pixel: gather its taps' words into one row (0 = +1 for a padded tap);
        # then, word by word, XOR-popcount it against all output channels at once (weights
        # laid out word-major, so the inner loop over channels vectorises, e.g. to VPOPCNTQ);
        # finally take back what the padded taps added (popcount of their weight words).
        n_img, _, _, cw = x.shape
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
                valid = _gather(x, stride, pad, kh, kw, n, oy, ox, col, padded)
                if pad_one:  # a padded tap's words are 0: +1 inputs, which count as they are
                    valid = taps
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


def _conv_np(x, w, channels, stride, pad, ho, wo, pad_one):
    n_img, h, wd, cw = x.shape
    o_ch, kh, kw, _ = w.shape
    xp = np.zeros((n_img, h + 2 * pad, wd + 2 * pad, cw), np.uint64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    valid = np.full((h + 2 * pad, wd + 2 * pad), int(pad_one), np.int32)  # words 0 = +1 inputs
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
                backend: str | None = None, pad_value: int = 0) -> np.ndarray:
    """Integer conv of packed signs: ``(N, Ho, Wo, O)`` int32 = conv(sign(x), sign(W)), the
    input padded with ``pad_value`` (0, or +1: every tap counts, its words 0)."""
    _, h, wd, _ = x.shape
    _, kh, kw, _ = w.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    if (backend or BACKEND) == "numba":
        return _conv_nb(x, w, channels, stride, pad, ho, wo, bool(pad_value))
    return _conv_np(x, w, channels, stride, pad, ho, wo, bool(pad_value))


def binary_gemm(x: np.ndarray, w: np.ndarray, n_bits: int, backend: str | None = None) -> np.ndarray:
    """``(M, O)`` int32 = sign(x) @ sign(W).T from packed ``(M, Kw)`` and ``(O, Kw)`` words."""
    if (backend or BACKEND) == "numba":
        return _gemm_nb(x, w, n_bits)
    pc = np.bitwise_count(x[:, None, :] ^ w[None, :, :]).sum(-1)
    return (n_bits - 2 * pc.astype(np.int64)).astype(np.int32)


# ---- fused kernels of the compiled plan (tbnn.export.plan) ---------------------------------
# The weights come in the layout the kernels walk, prepared once at load (``conv_weights``);
# a binary layer whose BatchNorm + sign the exporter folded writes its output's packed signs
# directly (thresholds compared in the kernel, max-pooling of the counts before them, bits
# packed 64 channels to a word), and the last binary layer writes its counts as float32 NCHW
# (the plan scales them with torch, as the node-by-node path does). numba only:
# without numba the plan runs the graph node by node (engine.PackedModel.run).

def int_thresholds(thr: np.ndarray, mode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exporter's folded thresholds as integer ones: bit -1 iff sgn * count <= lim, for an
    integer count. mode 0 (-1 iff c < t): c <= ceil(t) - 1; mode 1 (-1 iff c > t): -c <=
    ceil(-t) - 1; mode 2 (always -1) and 3 (never) as +-2^62. Exact: t is a float32."""
    t = thr.astype(np.float64)
    big = np.int64(2**62)
    sgn = np.where(mode == 1, -1, 1).astype(np.int64)
    lim = np.where(mode == 0, np.ceil(t) - 1, np.where(mode == 1, np.ceil(-t) - 1, 0)).astype(np.int64)
    lim = np.where(mode == 2, big, np.where(mode == 3, -big, lim))
    return sgn, lim


def conv_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wt, wpc) of packed conv weights (O, kh, kw, Cw): the words transposed to (kh*kw*Cw, O),
    and each tap's popcount per output channel (taps, O), which zero padding takes back."""
    o_ch, kh, kw, cw = w.shape
    wt = np.ascontiguousarray(w.reshape(o_ch, kh * kw * cw).T)
    wpc = np.bitwise_count(w.reshape(o_ch, kh * kw, cw)).sum(-1).T.astype(np.int64)
    return wt, np.ascontiguousarray(wpc)


if HAVE_NUMBA:
    @njit(inline="always")
    def xor_popcount4(cols, wt, acc):
        """The inner loop of every binary conv: acc[p, o] = sum_j popcount(cols[p, j] ^ wt[j, o])
        for 4 pixels p, each weight word loaded once for the 4 (register blocking over pixels);
        the loop over output channels vectorises (benchmarks/binary_peak.py times it alone)."""
        acc[:, :] = 0
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for j in range(cols.shape[1]):
            c0, c1, c2, c3 = cols[0, j], cols[1, j], cols[2, j], cols[3, j]
            for o in range(wt.shape[1]):
                w = wt[j, o]
                a0[o] += _popcount64(c0 ^ w)
                a1[o] += _popcount64(c1 ^ w)
                a2[o] += _popcount64(c2 ^ w)
                a3[o] += _popcount64(c3 ^ w)

    @njit(inline="always")
    def _block(x, wt, wpc, stride, pad, kh, kw, n, oys, oxs, cols, padded, acc, valid, pad_one):
        """XOR-popcounts of 4 output pixels at once (``xor_popcount4``): acc[p, o] and valid[p]
        as in ``_gather``; padded taps' weight popcounts taken back (with ``pad_one`` a padded
        tap is a +1 input, which counts as it is)."""
        taps, o_ch = wpc.shape
        for p in range(4):
            valid[p] = _gather(x, stride, pad, kh, kw, n, oys[p], oxs[p], cols[p], padded[p])
            if pad_one:
                valid[p] = taps
        xor_popcount4(cols, wt, acc)
        for p in range(4):
            if valid[p] < taps:
                for t in range(taps):
                    if padded[p, t]:
                        for o in range(o_ch):
                            acc[p, o] -= wpc[t, o]

    @njit(inline="always")
    def _threshold_pack(best, sgn, lim, out, n, y, xo):
        """Pack the signs the folded thresholds give into out[n, y, xo, :]: bit o is 1 (-1)
        where sgn[o] * count <= lim[o] (``int_thresholds``), branch-free."""
        for wi in range(out.shape[3]):
            word = np.uint64(0)
            for b in range(min(64, best.shape[0] - wi * 64)):
                o = wi * 64 + b
                word |= np.uint64(sgn[o] * best[o] <= lim[o]) << np.uint64(b)
            out[n, y, xo, wi] = word

    @njit(parallel=True, cache=True)
    def conv_fold(x, wt, wpc, channels, stride, pad, kh, kw, pool, sgn, lim, out, pad_one=False):
        """Binary conv -> max-pool (pool x pool, stride pool; 1 = none) -> thresholds -> packed
        signs in ``out`` (N, Ho/pool, Wo/pool, ceil(O/64)). Pixels go 4 at a time: a 2x2 pool
        window, else 4 neighbours in a row (the last block repeats its last pixel)."""
        n_img, pho, pwo, _ = out.shape
        taps, o_ch = wpc.shape
        per = pool * pool  # conv pixels per output pixel
        for row in prange(n_img * pho):
            n, py = row // pho, row % pho
            cols = np.zeros((4, wt.shape[0]), np.uint64)
            padded = np.zeros((4, taps), np.bool_)
            acc = np.zeros((4, o_ch), np.int64)
            valid = np.zeros(4, np.int64)
            best = np.empty(o_ch, np.int64)
            oys, oxs, owner = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
            todo = pwo * per  # conv pixels of this output row, in pool-window order
            for start in range(0, todo, 4):
                for p in range(4):
                    i = min(start + p, todo - 1)
                    px, d = i // per, i % per
                    owner[p] = px
                    oys[p], oxs[p] = py * pool + d // pool, px * pool + d % pool
                _block(x, wt, wpc, stride, pad, kh, kw, n, oys, oxs, cols, padded, acc, valid, pad_one)
                for p in range(4):
                    i = start + p
                    if i >= todo:
                        break
                    if i % per == 0:
                        for o in range(o_ch):
                            best[o] = valid[p] * channels - 2 * acc[p, o]
                    else:
                        for o in range(o_ch):
                            best[o] = max(best[o], valid[p] * channels - 2 * acc[p, o])
                    if i % per == per - 1:
                        _threshold_pack(best, sgn, lim, out, n, py, owner[p])

    @njit(parallel=True, cache=True)
    def conv_float(x, wt, wpc, channels, stride, pad, kh, kw, pool, out, pad_one=False):
        """Binary conv -> max-pool (pool x pool, stride pool; 1 = none) -> its counts as float32
        NHWC ``out`` (exact below 2^24). The max of the counts is the max of the scaled values,
        the per-channel scales being positive. The pixel schedule is conv_fold's, written out
        again on purpose: a shared inline helper measured slower (benchmarks/RESULTS.md)."""
        n_img, pho, pwo, o_ch = out.shape
        taps = wpc.shape[0]
        per = pool * pool
        for row in prange(n_img * pho):
            n, py = row // pho, row % pho
            cols = np.zeros((4, wt.shape[0]), np.uint64)
            padded = np.zeros((4, taps), np.bool_)
            acc = np.zeros((4, o_ch), np.int64)
            valid = np.zeros(4, np.int64)
            best = np.empty(o_ch, np.int64)
            oys, oxs, owner = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
            todo = pwo * per
            for start in range(0, todo, 4):
                for p in range(4):
                    i = min(start + p, todo - 1)
                    px, d = i // per, i % per
                    owner[p] = px
                    oys[p], oxs[p] = py * pool + d // pool, px * pool + d % pool
                _block(x, wt, wpc, stride, pad, kh, kw, n, oys, oxs, cols, padded, acc, valid, pad_one)
                for p in range(4):
                    i = start + p
                    if i >= todo:
                        break
                    for o in range(o_ch):
                        v = valid[p] * channels - 2 * acc[p, o]
                        best[o] = v if i % per == 0 else max(best[o], v)
                    if i % per == per - 1:
                        for o in range(o_ch):
                            out[n, py, owner[p], o] = best[o]

    @njit(parallel=True, cache=True)
    def gemm_fold(x, w, n_bits, sgn, lim, out):
        """Binary linear -> thresholds -> packed signs ``out`` (M, ceil(O/64))."""
        m, kw = x.shape
        o_ch = w.shape[0]
        out4 = out.reshape(m, 1, 1, out.shape[1])
        for i in prange(m):
            best = np.empty(o_ch, np.int64)
            for o in range(o_ch):
                acc = 0
                for k in range(kw):
                    acc += _popcount64(x[i, k] ^ w[o, k])
                best[o] = n_bits - 2 * acc
            _threshold_pack(best, sgn, lim, out4, i, 0, 0)

    @njit(parallel=True, cache=True)
    def gemm_float(x, w, n_bits, out):
        """Binary linear -> its counts as float32 ``out`` (M, O)."""
        m, kw = x.shape
        for i in prange(m):
            for o in range(w.shape[0]):
                acc = 0
                for k in range(kw):
                    acc += _popcount64(x[i, k] ^ w[o, k])
                out[i, o] = n_bits - 2 * acc

    @njit(parallel=True, cache=True)
    def pack_nhwc(x, lo, hi, out):
        """A float32 NHWC batch (channels contiguous) packed along channels by per-channel
        bounds: bit 1 (-1) where x < lo[c] or x > hi[c] (lo 0, hi +inf: the sign; NaN gives +1)."""
        n_img, h, wd, c_ch = x.shape
        for row in prange(n_img * h):
            n, y = row // h, row % h
            for xx in range(wd):
                for wi in range(out.shape[3]):
                    word = np.uint64(0)
                    for b in range(min(64, c_ch - wi * 64)):
                        c = wi * 64 + b
                        v = x[n, y, xx, c]
                        word |= np.uint64(v < lo[c] or v > hi[c]) << np.uint64(b)
                    out[n, y, xx, wi] = word

    @njit(parallel=True, cache=True)
    def pack_nchw(x, out):
        """Signs of a float32 NCHW (or NC) batch packed along channels: 1 bit for x < 0."""
        n_img, c_ch = x.shape[0], x.shape[1]
        h, wd = (x.shape[2], x.shape[3]) if x.ndim == 4 else (1, 1)
        x4 = x.reshape(n_img, c_ch, h, wd)
        out4 = out.reshape(n_img, h, wd, out.shape[-1])
        for row in prange(n_img * h):
            n, y = row // h, row % h
            for xx in range(wd):
                for wi in range(out4.shape[3]):
                    word = np.uint64(0)
                    for b in range(64):
                        c = wi * 64 + b
                        if c >= c_ch:
                            break
                        if x4[n, c, y, xx] < 0:
                            word |= np.uint64(1) << np.uint64(b)
                    out4[n, y, xx, wi] = word
