"""The compiled plan of a packed model: its graph as a list of prebound steps, so that a call
runs one short loop instead of interpreting every node (no per-node lookups of ops, tensors
or attributes, no numpy passes between binary layers).

A binary layer is one fused numba kernel (``tbnn.export.kernels``): its input is packed from
floats by ``pack_nchw`` when a float layer feeds it, its weights are in the layout the kernel
walks (prepared here, once), and it writes either the packed signs of the next binary layer's
input (the exporter's folded BatchNorm + sign thresholds, with a following 2x2-style max-pool
taken on the counts before them) or, as the last binary layer, float32 values scaled per
channel. Float layers (the first convolution, the classifier, BatchNorm, pooling, adds) run
through torch (oneDNN), exactly as in ``PackedModel.run``, which stays the reference path that
records every binary layer's integer result. Both give the same results (tested on whole
test sets).
"""
from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels

#: batches below this run torch's float layers in the calling thread (see Plan.__call__)
SMALL_BATCH = 8
#: a call this soon after the previous one finds the kernels' threads still awake (seconds)
AWAKE_S = 0.002
#: images per call of a float conv whose BatchNorm + sign is folded (its float output of a
#: few images stays in cache until packed: 2.5x faster than the whole batch of 64 at once on
#: the AVX2 machine of benchmarks/RESULTS.md; oneDNN's results do not depend on the batch)
FIRST_CONV_CHUNK = 4


class PlanError(Exception):
    """A step of the plan failed: ``node`` is the graph node it runs, ``error`` what it raised."""

    def __init__(self, node: dict, error: Exception):
        super().__init__(f"node {node['name']!r} ({node['op']}): {error}")
        self.node, self.error = node, error


def _square_pool(p: dict | None) -> int | None:
    """The window of a max-pool the fused kernel takes (k x k, stride k, no padding), 1 for
    none, None for one it does not take."""
    if p is None:
        return 1
    k, s = p["kernel_size"], p["stride"]
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else -1)
    s = s if isinstance(s, int) else (s[0] if s[0] == s[1] else -1)
    plain = p["padding"] in (0, [0, 0]) and p["dilation"] in (1, [1, 1]) and not p["ceil_mode"]
    return k if k > 0 and k == s and plain else None


class Plan:
    """Prebound steps of a PackedModel; call it on a checked float32 NCHW batch."""

    def __init__(self, model):
        self.model = model
        self._consumers: dict[str, list[dict]] = {}
        for node in model.nodes:
            for i in node["inputs"]:
                self._consumers.setdefault(i, []).append(node)
        self._absorbed: set[str] = set()  # max-pools done inside the binary layer before them
        slot = {}
        self.steps: list[tuple] = []
        for node in model.nodes:
            slot[node["name"]] = len(slot)
            ins = tuple(slot[i] for i in node["inputs"])
            self.steps.append((self._step(node), ins, slot[node["name"]]))
        self.n_slots, self.output = len(slot), slot[model.output]
        self._last_end = -1e9

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits; an error names the node that raised it (``PlanError``).

        Threads: waking a thread pool that has gone to sleep costs up to ~10 ms on some
        machines (virtual CPUs), far more than a small batch's work. So a small batch runs
        torch's float layers in the calling thread, and its binary layers on all numba threads
        only when the previous call ended moments ago (the threads are still awake); a call
        after an idle moment runs them in the calling thread too. Large batches use every thread."""
        values = [None] * self.n_slots
        small = x.shape[0] < SMALL_BATCH
        torch_threads, numba_threads = torch.get_num_threads(), kernels.get_num_threads()
        awake = time.perf_counter() - self._last_end < AWAKE_S
        torch.set_num_threads(1 if small else torch_threads)
        kernels.set_num_threads(1 if small and not awake else numba_threads)
        try:
            for fn, ins, out in self.steps:
                try:
                    values[out] = fn(x, *[values[i] for i in ins])
                except Exception as e:  # noqa: BLE001  (torch, numpy, numba: many types)
                    raise PlanError(self.model.nodes[out], e) from e
        finally:
            torch.set_num_threads(torch_threads)
            kernels.set_num_threads(numba_threads)
            self._last_end = time.perf_counter()
        return values[self.output]

    def _step(self, node: dict):
        op = node["op"]
        if op == "input":
            return lambda x: x
        if node["name"] in self._absorbed:
            return lambda x, v: v
        if op in ("bconv2d", "blinear") and kernels.HAVE_NUMBA:
            fused = self._binary(node)
            if fused is not None:
                return fused
        model = self.model
        if op == "conv2d" and node["attrs"]["input_act"] == "identity" and not node["attrs"].get("pad_value"):
            return self._float_conv(node, self._sign_of_batchnorm(node) if kernels.HAVE_NUMBA else None)
        if op in ("bconv2d", "blinear"):
            return lambda x, v: model._binary(node, v, None)
        return lambda x, *ins: model._node(node, x, list(ins), None)

    def _absorb_pool(self, node: dict) -> int:
        """The window of a max-pool that is the only reader of this binary conv's float output
        (then taken on the counts, inside the kernel: max commutes with the positive scale),
        else 1."""
        readers = self._consumers.get(node["name"], [])
        if node["op"] != "bconv2d" or len(readers) != 1 or readers[0]["op"] != "maxpool2d":
            return 1
        pool = _square_pool(readers[0]["attrs"])
        if pool is None or pool == 1:
            return 1
        self._absorbed.add(readers[0]["name"])
        return pool

    def _sign_of_batchnorm(self, conv: dict):
        """(lo, hi) bounds per channel when ``conv`` is read by one BatchNorm whose output only
        binary layers read (they take its sign): the BatchNorm and the sign are then one
        comparison of the conv's output, bit -1 iff y < lo or y > hi (``batchnorm_sign_bounds``),
        and the BatchNorm's step is absorbed. None where this does not hold."""
        readers = self._consumers.get(conv["name"], [])
        if len(readers) != 1 or readers[0]["op"] != "batchnorm":
            return None
        bn = readers[0]
        users = self._consumers.get(bn["name"], [])
        if not users or not all(u["op"] in ("bconv2d", "blinear") for u in users):
            return None
        a, t = bn["attrs"], self.model._t
        bounds = batchnorm_sign_bounds(t[a["running_mean"]], t[a["running_var"]], t[a["weight"]], t[a["bias"]],
                                       a["eps"])
        if bounds is not None:
            self._absorbed.add(bn["name"])
        return bounds

    def _float_conv(self, node: dict, sign_bounds):
        """A full-precision convolution in channels_last: oneDNN's faster path for few input
        channels, with results equal to the NCHW one (tested); what follows stays NHWC. With
        ``sign_bounds`` its output is packed at once into the signs its BatchNorm would give."""
        a, t = node["attrs"], self.model._t
        w = t[a["weight"]].contiguous(memory_format=torch.channels_last)
        bias = t.get(a.get("bias"))
        args = (a["stride"], a["padding"], a["dilation"], a["groups"])
        if sign_bounds is None:
            return lambda x, v: F.conv2d(v.contiguous(memory_format=torch.channels_last), w, bias, *args)
        lo, hi = sign_bounds
        channels = len(lo)

        def conv_sign(x, v):
            v = v.contiguous(memory_format=torch.channels_last)
            words = None
            for i in range(0, v.shape[0], FIRST_CONV_CHUNK):
                y = F.conv2d(v[i:i + FIRST_CONV_CHUNK], w, bias, *args).permute(0, 2, 3, 1).numpy()  # NHWC
                if words is None:
                    words = np.empty((v.shape[0], *y.shape[1:3], kernels.words(channels)), np.uint64)
                kernels.pack_nhwc(y, lo, hi, words[i:i + FIRST_CONV_CHUNK])
            return kernels.Bits(words, channels)
        return conv_sign

    def _binary(self, node: dict):
        a, t = node["attrs"], self.model._np
        fold, channels = a.get("fold"), a["in_channels"]
        if fold is not None:
            pool = _square_pool(fold.get("pool"))
            if pool is None:
                return None
            sgn, lim = kernels.int_thresholds(t[fold["threshold"]], t[fold["mode"]])
        else:  # the float output is scaled (+ bias) by torch, exactly as PackedModel.run does
            scale, bias = self.model._t[a["scale"]], self.model._t.get(a.get("bias"))
            pool = self._absorb_pool(node)
        w = t[a["weight_bits"]]
        o_ch, out_words = w.shape[0], kernels.words(w.shape[0])
        if node["op"] == "blinear":
            w = np.ascontiguousarray(w)

            def linear(x, v):
                bits = _packed(v, channels)
                if fold is not None:
                    out = np.empty((bits.shape[0], out_words), np.uint64)
                    kernels.gemm_fold(bits, w, channels, sgn, lim, out)
                    return kernels.Bits(out, o_ch)
                out = np.empty((bits.shape[0], o_ch), np.float32)
                kernels.gemm_float(bits, w, channels, out)
                return with_scale(torch.from_numpy(out), scale, bias)
            return linear
        wt, wpc = kernels.conv_weights(w)
        kh, kw, stride, pad = w.shape[1], w.shape[2], a["stride"][0], a["padding"][0]
        pad_one = bool(a.get("pad_value"))

        def conv(x, v):
            bits = _packed(v, channels)
            n, h, wd, _ = bits.shape
            ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
            if fold is not None:
                out = np.empty((n, ho // pool, wo // pool, out_words), np.uint64)
                kernels.conv_fold(bits, wt, wpc, channels, stride, pad, kh, kw, pool, sgn, lim, out, pad_one)
                return kernels.Bits(out, o_ch)
            out = np.empty((n, ho // pool, wo // pool, o_ch), np.float32)  # NHWC: channels_last for torch
            kernels.conv_float(bits, wt, wpc, channels, stride, pad, kh, kw, pool, out, pad_one)
            return with_scale(torch.from_numpy(out).permute(0, 3, 1, 2), scale, bias)
        return conv


def with_scale(out: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A binary layer's float output: its counts times the per-channel factor, plus bias."""
    shape = (1, -1, 1, 1) if out.ndim == 4 else (1, -1)
    out = out * scale.view(shape)
    return out + bias.view(shape) if bias is not None else out


def _packed(v, channels: int) -> np.ndarray:
    """The packed words of a binary layer's input (as they are, or packed from floats), after
    checking its channels: the kernels do not bounds-check."""
    nhwc = not isinstance(v, kernels.Bits) and v.ndim == 4 and v.permute(0, 2, 3, 1).is_contiguous()
    have = v.channels if isinstance(v, kernels.Bits) else v.shape[1]
    if have != channels:
        raise ValueError(f"a binary layer's input has {have} channels; its attrs.in_channels is {channels}")
    if isinstance(v, kernels.Bits):
        return v.words
    if nhwc:  # channels_last in memory
        x = v.detach().float().permute(0, 2, 3, 1).numpy()
        words = np.empty((*x.shape[:3], kernels.words(channels)), np.uint64)
        kernels.pack_nhwc(x, *_sign_bounds(channels), words)
        return words
    x = v.detach().float().contiguous().numpy()
    words = np.empty((x.shape[0], *x.shape[2:], kernels.words(channels)), np.uint64)
    kernels.pack_nchw(x, words)
    return words


@functools.lru_cache(maxsize=None)
def _sign_bounds(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """pack_nhwc's bounds of the plain sign (-1 iff x < 0), made once per channel count."""
    return np.zeros(channels, np.float32), np.full(channels, np.inf, np.float32)


def _ordered(f: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the order of the values (-0.0 just below +0.0)."""
    i = f.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF) - 1, i)


def _unordered(k: np.ndarray) -> np.ndarray:
    return np.where(k < 0, (-(k + 1)) | 0x80000000, k).astype(np.uint32).view(np.float32)


def batchnorm_sign_bounds(mean, var, weight, bias, eps: float):
    """(lo, hi) float32 per channel such that, for every float32 y, torch's own eval-mode
    BatchNorm (``F.batch_norm``, as the reference path ``PackedModel.run`` computes it) gives
    a negative value (the sign -1) exactly where y < lo or y > hi. Found by bisection over the
    float32 values on torch's BatchNorm itself (it is monotone in y, its slope's sign being
    that of the weight), so the fold is exact whatever rounding (FMA or not) torch uses on
    this CPU. None (no fold) for a channel of weight 0 or a BatchNorm whose sign does not
    change over the finite floats."""
    c = mean.numel()
    slope = weight.double() / torch.sqrt(var.double() + eps)
    if not bool(torch.isfinite(slope).all()) or bool((slope == 0).any()):
        return None

    def negative(keys):  # BN(y) < 0 at y = _unordered(keys), channel by channel
        y = torch.from_numpy(_unordered(keys)).view(1, c, 1, 1).expand(1, c, 1, 16).contiguous()
        return (F.batch_norm(y, mean, var, weight, bias, False, 0.0, eps) < 0)[0, :, 0, 0].numpy()

    big = np.float32(np.finfo(np.float32).max)
    lo_k, hi_k = np.full(c, _ordered(np.array([-big]))[0]), np.full(c, _ordered(np.array([big]))[0])
    rising = slope.numpy() > 0  # BN increasing: negative below the switch
    if not ((negative(lo_k) == rising) & (negative(hi_k) != rising)).all():
        return None
    while (hi_k - lo_k > 1).any():  # invariant: the switch lies in (lo_k, hi_k]
        mid = (lo_k + hi_k) // 2
        below = negative(mid) == rising  # mid is still on the -inf side of the switch
        lo_k, hi_k = np.where(below, mid, lo_k), np.where(below, hi_k, mid)
    first = _unordered(hi_k)  # the first value past the switch
    inf = np.float32(np.inf)
    lo = np.where(rising, first, -inf).astype(np.float32)
    hi = np.where(rising, inf, _unordered(lo_k)).astype(np.float32)
    return lo, hi
