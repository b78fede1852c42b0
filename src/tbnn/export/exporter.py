"""Turn a trained tbnn model into a packed graph: binary layers' weights as bits, scales
folded into per-channel output factors, and every "binary layer -> [max-pool] -> BatchNorm
-> sign" chain folded into per-channel thresholds on the integer XNOR-popcount result."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ..binarize import BINARY_LAYERS
from ..errors import ExportError
from .kernels import pack_signs

#: engine op of each supported module type (exact type match; subclasses are not assumed alike)
MODULE_OPS = {
    nn.Conv2d: "conv2d", nn.Linear: "linear", nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm",
    nn.MaxPool2d: "maxpool2d", nn.AdaptiveAvgPool2d: "adaptive_avgpool2d", nn.Flatten: "flatten",
    nn.Identity: "identity", nn.ReLU: "relu", nn.Hardtanh: "hardtanh",
}


class _Tracer(fx.Tracer):
    """Stops at binary layers and at any module with parameters of its own (e.g. RPReLU), so an
    unsupported layer is named as a layer rather than failing somewhere inside its forward."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        own_params = next(m.parameters(recurse=False), None) is not None
        return isinstance(m, BINARY_LAYERS) or own_params or super().is_leaf_module(m, qualname)


def _f32(t: torch.Tensor, half: bool) -> np.ndarray:
    a = t.detach().float().cpu().numpy().astype(np.float32)  # a copy; float() first: numpy has no bfloat16
    return a.astype(np.float16) if half else a


class _Builder:
    def __init__(self, half: bool):
        self.half, self.nodes, self.tensors = half, [], {}

    def tensor(self, node: str, field: str, value, half_ok: bool = False) -> str:
        """Store a float tensor (float16 only for the bulky weights, and only when asked)."""
        key = f"{node}.{field}"
        self.tensors[key] = _f32(value, self.half and half_ok)
        return key

    def module_node(self, name: str, m: nn.Module, inputs: list[str]) -> dict:
        node = {"name": name, "inputs": inputs, "attrs": {}}
        a = node["attrs"]
        if isinstance(m, BINARY_LAYERS):
            return self.binary_node(node, m)
        op = MODULE_OPS.get(type(m))
        if op is None:
            raise ExportError(f"layer {name!r} ({type(m).__name__}) is not supported by the packed format; "
                              f"supported: {sorted(t.__name__ for t in MODULE_OPS)} and tbnn binary layers")
        node["op"] = op
        if op in ("conv2d", "linear"):
            if op == "conv2d":
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise ExportError(f"layer {name!r}: only numeric zero padding is supported")
                a.update(stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation), groups=m.groups)
            a["input_act"] = "identity"
            a["weight"] = self.tensor(name, "weight", m.weight, half_ok=True)
            a["bias"] = self.tensor(name, "bias", m.bias) if m.bias is not None else None
        elif op == "batchnorm":
            if not m.track_running_stats or m.running_mean is None:
                raise ExportError(f"layer {name!r}: BatchNorm without running statistics cannot be exported")
            a["eps"] = m.eps
            for field in ("running_mean", "running_var"):
                a[field] = self.tensor(name, field, getattr(m, field).float())
            one, zero = torch.ones_like(m.running_mean), torch.zeros_like(m.running_mean)
            a["weight"] = self.tensor(name, "weight", m.weight if m.affine else one)
            a["bias"] = self.tensor(name, "bias", m.bias if m.affine else zero)
        elif op == "maxpool2d":
            a.update(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     ceil_mode=m.ceil_mode)
        elif op == "adaptive_avgpool2d":
            a["output_size"] = m.output_size
        elif op == "flatten":
            a.update(start_dim=m.start_dim, end_dim=m.end_dim)
        elif op == "hardtanh":
            a.update(min_val=m.min_val, max_val=m.max_val)
        return node

    def binary_node(self, node: dict, m) -> dict:
        cfg, name, a = m.config, node["name"], node["attrs"]
        conv = isinstance(m, nn.Conv2d)
        if conv:
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or isinstance(m.padding, str) or \
                    m.padding_mode != "zeros" or m.padding[0] != m.padding[1] or m.stride[0] != m.stride[1]:
                raise ExportError(f"layer {name!r}: binary conv needs groups=1, dilation=1 and equal numeric "
                                  "stride and zero padding in both directions")
            a.update(stride=list(m.stride), padding=list(m.padding), dilation=[1, 1], groups=1)
            if cfg.pad_value and cfg.binarize_activations and any(m.padding):
                a["pad_value"] = cfg.pad_value  # absent for zero padding: those files stay as they were
        beta = m.beta()
        for part, label in ((m.output_scale_h, "a factorised output scale (output_scale=factorized)"),
                            (m.act_threshold, "a learned activation threshold (act_threshold=channel, RSign)")):
            if part is not None:
                raise ExportError(f"layer {name!r}: {label} is not supported by the packed format yet")
        if m.is_binary and (beta is None or beta.numel() == 1):
            # conv(beta*sign(x), gamma*alpha*sign(W)) = gamma*alpha*beta * popcount-conv: one factor per channel.
            alpha = m.alpha()
            scale = torch.ones(m.weight.shape[0], device=m.weight.device)
            for s in (alpha, beta, m.gamma()):
                if s is not None:
                    scale = scale * s.detach().flatten().expand_as(scale)
            if (scale <= 0).any():
                raise ExportError(f"layer {name!r}: non-positive weight/activation scale cannot be exported")
            signs = (m.weight.detach() < 0).cpu().numpy()
            signs = signs.transpose(0, 2, 3, 1) if conv else signs
            node["op"] = "bconv2d" if conv else "blinear"
            a.update(in_channels=m.weight.shape[1], kernel=list(m.weight.shape[2:]) if conv else None)
            self.tensors[f"{name}.weight_bits"] = pack_signs(signs)
            a["weight_bits"] = f"{name}.weight_bits"
            a["scale"] = self.tensor(name, "scale", scale)
            a["bias"] = self.tensor(name, "bias", m.bias) if m.bias is not None else None
            return node
        if m.is_binary:
            raise ExportError(f"layer {name!r}: a per-channel activation scale (act_scale_granularity=channel) "
                              "cannot be folded out of the XNOR-popcount; export supports per-layer beta")
        # Weight-only or activation-only binarization: a float layer with its effective weight.
        node["op"] = "conv2d" if conv else "linear"
        a["input_act"] = "sign" if cfg.binarize_activations else cfg.fp_activation
        a["weight"] = self.tensor(name, "weight", m.binary_weight(), half_ok=True)
        a["bias"] = self.tensor(name, "bias", m.bias) if m.bias is not None else None
        return node


def _consumers(nodes: list[dict], name: str) -> list[dict]:
    return [n for n in nodes if name in n["inputs"]]


def fold_thresholds(nodes: list[dict], tensors: dict) -> list[dict]:
    """binary layer -> [maxpool] -> BatchNorm -> (only sign-reading consumers): the binary
    layer outputs bits directly, by per-channel thresholds on its integer result."""
    out = list(nodes)
    for b in nodes:
        if b["op"] not in ("bconv2d", "blinear") or b["attrs"].get("bias") is not None:
            continue
        chain, cur = [], b
        nxt = _consumers(out, cur["name"])
        if len(nxt) == 1 and nxt[0]["op"] == "maxpool2d":
            chain.append(nxt[0])
            nxt = _consumers(out, nxt[0]["name"])
        if len(nxt) != 1 or nxt[0]["op"] != "batchnorm":
            continue
        bn = nxt[0]
        users = _consumers(out, bn["name"])
        if not users or not all(u["op"] in ("bconv2d", "blinear") for u in users):
            continue
        # sign(bn(scale * c)) = +1  iff  a*c + d >= 0, with a = g*scale, d = beta - g*mean, g = w/sqrt(var+eps)
        ba = bn["attrs"]
        var, mean = tensors[ba["running_var"]].astype(np.float64), tensors[ba["running_mean"]].astype(np.float64)
        w, beta = tensors[ba["weight"]].astype(np.float64), tensors[ba["bias"]].astype(np.float64)
        g = w / np.sqrt(var + ba["eps"])
        a = g * tensors[b["attrs"]["scale"]].astype(np.float64)
        d = beta - g * mean
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a != 0, -d / a, 0.0)
        # mode 0: bit(-1) iff c < t;  1: iff c > t;  2: always -1;  3: always +1
        mode = np.where(a > 0, 0, np.where(a < 0, 1, np.where(d < 0, 2, 3))).astype(np.int8)
        tensors[f"{b['name']}.threshold"] = t.astype(np.float32)  # as precise as torch's float32 BN
        tensors[f"{b['name']}.threshold_mode"] = mode
        tensors.pop(b["attrs"].pop("scale"))  # folded into the thresholds
        b["attrs"]["fold"] = {
            "pool": chain[0]["attrs"] if chain else None,
            "threshold": f"{b['name']}.threshold",
            "mode": f"{b['name']}.threshold_mode",
            "folded": [n["name"] for n in chain] + [bn["name"]],
        }
        for u in users:
            u["inputs"] = [b["name"] if i == bn["name"] else i for i in u["inputs"]]
        for n in chain + [bn]:
            out.remove(n)
            for key in ("running_mean", "running_var", "weight", "bias"):
                tensors.pop(n["attrs"].get(key) or "", None)
    return out


def export_graph(model: nn.Module, half: bool = False) -> tuple[list[dict], str, dict]:
    """(nodes, output name, tensors) of ``model`` with eval-mode semantics (its own mode is
    left as it was)."""
    was_training = model.training
    try:
        graph = _Tracer().trace(model.eval())
    except Exception as e:  # noqa: BLE001  (fx raises many types)
        raise ExportError(f"cannot trace the model's forward ({type(e).__name__}: {e})") from e
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    b = _Builder(half)
    output = None
    for n in graph.nodes:
        args = [a.name for a in n.args if isinstance(a, fx.Node)]
        if n.op == "placeholder":
            b.nodes.append({"name": n.name, "op": "input", "inputs": [], "attrs": {}})
        elif n.op == "call_module":
            node = b.module_node(n.target, modules[n.target], args)
            node["name"] = n.name
            node["layer"] = n.target
            b.nodes.append(node)
        elif n.op == "call_function" and n.target in (operator.add, torch.add) and len(args) == 2:
            b.nodes.append({"name": n.name, "op": "add", "inputs": args, "attrs": {}})
        elif n.op == "output":
            output = args[0]
        else:
            raise ExportError(f"operation {n.op} {n.target!r} (node {n.name!r}) is not supported by the packed format")
    nodes = fold_thresholds(b.nodes, b.tensors)
    return nodes, output, b.tensors
