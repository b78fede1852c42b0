"""Model summary in the manner of larq's: parameters, packed bytes and MACs per layer.

A binary parameter is a latent weight of a layer that binarizes its weights (1 bit when
packed); every other parameter (scales, BatchNorm, full-precision layers) counts 32 bits.
A multiply-accumulate is *binary* when both the weight and the input of the layer are
binarized (computable as XNOR-popcount), else *float*. BatchNorm running statistics are
buffers and not counted (at inference they fold into a per-channel affine or threshold).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .binarize import BINARY_LAYERS

_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    float_params: int
    binary_params: int
    float_macs: int
    binary_macs: int

    @property
    def packed_bits(self) -> int:
        return 32 * self.float_params + self.binary_params


@dataclass
class ModelSummary:
    rows: list[LayerRow] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def float_params(self) -> int:
        return self.total("float_params")

    @property
    def binary_params(self) -> int:
        return self.total("binary_params")

    @property
    def packed_bytes(self) -> int:
        """Size with binary weights packed 1 bit each and everything else float32."""
        return (self.total("packed_bits") + 7) // 8

    @property
    def float32_bytes(self) -> int:
        """Size of the same parameters all in float32."""
        return 4 * (self.float_params + self.binary_params)

    def as_dict(self) -> dict:
        return {
            "params_total": self.float_params + self.binary_params,
            "params_binary": self.binary_params,
            "params_float": self.float_params,
            "bytes_float32": self.float32_bytes,
            "bytes_packed": self.packed_bytes,
            "macs_binary": self.total("binary_macs"),
            "macs_float": self.total("float_macs"),
        }

    def to_markdown(self) -> str:
        head = "| layer | type | output | float params | binary params | packed KiB | float MACs | binary MACs |"
        lines = [head, "|" + "---|" * 8]
        for r in self.rows:
            lines.append(f"| {r.name} | {r.kind} | {'x'.join(map(str, r.output_shape))} | {r.float_params:,} "
                         f"| {r.binary_params:,} | {r.packed_bits / 8192:.1f} | {r.float_macs:,} "
                         f"| {r.binary_macs:,} |")
        d = self.as_dict()
        lines.append(f"| **total** | | | {d['params_float']:,} | {d['params_binary']:,} "
                     f"| {d['bytes_packed'] / 1024:.1f} | {d['macs_float']:,} | {d['macs_binary']:,} |")
        lines.append("")
        lines.append(f"float32 size {d['bytes_float32'] / 2**20:.2f} MiB, packed {d['bytes_packed'] / 2**20:.3f} MiB "
                     f"({d['bytes_float32'] / max(d['bytes_packed'], 1):.1f}x smaller); "
                     f"{d['macs_binary'] / max(d['macs_binary'] + d['macs_float'], 1):.1%} of MACs binary")
        return "\n".join(lines)


def _count(module: nn.Module) -> tuple[int, int]:
    """(float, binary) parameter counts of a module's own parameters."""
    binary = 0
    if isinstance(module, BINARY_LAYERS) and module.config.binarize_weights:
        binary = module.weight.numel()
    total = sum(p.numel() for p in module.parameters(recurse=False))
    return total - binary, binary


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        return out[0].numel() * module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return out[0].numel() * module.in_features
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_size: tuple[int, ...]) -> ModelSummary:
    """Summary for one input of shape ``input_size`` (C, H, W), without batch dimension."""
    rows: list[LayerRow] = []
    hooks = []

    def hook(name):
        def fn(module, _inputs, out):
            fp, bp = _count(module)
            macs = _macs(module, out)
            binary = isinstance(module, BINARY_LAYERS) and module.is_binary
            rows.append(LayerRow(name, type(module).__name__, tuple(out.shape[1:]), fp, bp,
                                 0 if binary else macs, macs if binary else 0))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, _LEAF_TYPES):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    counted = {r.name for r in rows}
    # Parameters of modules not hooked (none in our models) must not vanish from the totals.
    for name, m in model.named_modules():
        if name not in counted and not isinstance(m, _LEAF_TYPES):
            fp, bp = _count(m)
            if fp or bp:
                rows.append(LayerRow(name, type(m).__name__, (), fp, bp, 0, 0))
    return ModelSummary(rows)


def main(argv=None) -> None:
    """``python -m tbnn.summary MODEL [--input 3,224,224] [--width 1.0] [--preset paper]``"""
    import argparse

    from .binarize import PRESETS, preset
    from .models import MODELS, build_model

    ap = argparse.ArgumentParser(prog="python -m tbnn.summary", description="Per-layer bits, bytes and MACs.")
    ap.add_argument("model", choices=MODELS.names())
    ap.add_argument("--input", default=None, help="C,H,W of one input, H = W (default: 3 channels at the "
                                                   "model's default_input_size)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ap.add_argument("--totals", action="store_true", help="print only the totals line")
    args = ap.parse_args(argv)
    size = MODELS[args.model].default_input_size
    c, h, w = (int(v) for v in (args.input or f"3,{size},{size}").split(","))
    model = build_model(args.model, num_classes=args.classes, in_channels=c, input_size=h, width=args.width,
                        binarize=preset(args.preset))
    text = summarize(model, (c, h, w)).to_markdown()
    print(text.splitlines()[-1] if args.totals else text)


if __name__ == "__main__":
    main()
