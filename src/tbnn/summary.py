"""Model summary in the manner of larq's: parameters, packed bytes and MACs per layer.

A binary parameter is a latent weight of a layer that binarizes its weights; every other
parameter (scales, BatchNorm, full-precision layers) is a float parameter. The packed size
is the size of the ``.tbnn`` file ``tbnn.export.export`` writes for the network (computed by
laying the file out in memory, not estimated): binary weights 1 bit each but in 64-bit
words per kernel tap (a layer of 16 input channels takes 64 bits per tap), full-precision
layers and the BatchNorms that stay (with their running statistics) in float32, folded
BatchNorms as per-channel thresholds, each tensor 64-byte aligned, plus the header and
checksum. ``src/export.py`` adds its metadata (config, checkpoint path, normalisation) to the
header: its file is larger by that (under 1 KB). A network the format cannot hold
gets the estimate instead (1 bit per binary parameter, 32 per float one), named as such.
A multiply-accumulate is *binary* when both the weight and the input of the layer are
binarized (computable as XNOR-popcount), else *float*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .binarize import BINARY_LAYERS
from .errors import ConfigError, DataError

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
    file_bytes: int | None = None  # its tensors' bytes in the packed file (None: no file)

    @property
    def packed_bits(self) -> int:
        """The estimate: 1 bit per binary parameter, 32 per float one."""
        return 32 * self.float_params + self.binary_params


@dataclass
class ModelSummary:
    rows: list[LayerRow] = field(default_factory=list)
    #: the size of the packed file, or None with ``not_exportable`` saying why
    file_bytes: int | None = None
    not_exportable: str | None = None

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def float_params(self) -> int:
        return self.total("float_params")

    @property
    def binary_params(self) -> int:
        return self.total("binary_params")

    @property
    def estimated_bytes(self) -> int:
        """Binary weights 1 bit each and every other parameter float32, nothing else."""
        return (self.total("packed_bits") + 7) // 8

    @property
    def packed_bytes(self) -> int:
        """The packed file's size; the estimate for a network the format cannot hold."""
        return self.estimated_bytes if self.file_bytes is None else self.file_bytes

    @property
    def packed_is(self) -> str:
        """What ``packed_bytes`` is, in words."""
        if self.file_bytes is not None:
            return "size of the .tbnn file (tbnn.export.export, no metadata)"
        return f"estimate (1 bit per binary parameter, 32 per float one): not exportable: {self.not_exportable}"

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
            "bytes_packed_is": self.packed_is,
            "macs_binary": self.total("binary_macs"),
            "macs_float": self.total("float_macs"),
        }

    def to_markdown(self) -> str:
        head = "| layer | type | output | float params | binary params | packed KiB | float MACs | binary MACs |"
        lines = [head, "|" + "---|" * 8]
        for r in self.rows:
            kib = (r.packed_bits / 8 if self.file_bytes is None else r.file_bytes or 0) / 1024
            lines.append(f"| {r.name} | {r.kind} | {'x'.join(map(str, r.output_shape))} | {r.float_params:,} "
                         f"| {r.binary_params:,} | {kib:.1f} | {r.float_macs:,} | {r.binary_macs:,} |")
        if self.file_bytes is not None:  # so that the column adds up to the file
            rest = self.file_bytes - sum(r.file_bytes or 0 for r in self.rows)
            lines.append(f"| (file header, checksum) | | | | | {rest / 1024:.1f} | | |")
        d = self.as_dict()
        lines.append(f"| **total** | | | {d['params_float']:,} | {d['params_binary']:,} "
                     f"| {d['bytes_packed'] / 1024:.1f} | {d['macs_float']:,} | {d['macs_binary']:,} |")
        lines.append("")
        packed = ("packed file" if self.file_bytes is not None else
                  f"packed estimate (not exportable: {self.not_exportable})")
        lines.append(f"float32 size {d['bytes_float32'] / 2**20:.2f} MiB, {packed} {d['bytes_packed']:,} B "
                     f"({d['bytes_packed'] / 2**20:.3f} MiB, {d['bytes_float32'] / max(d['bytes_packed'], 1):.1f}x "
                     "smaller); "
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
    """What a binary network costs, per layer and in total: parameters (binary and float),
    multiply-accumulates (binary and float), and its size as float32 and packed.

    Args:
        model: any ``nn.Module``; tbnn's binary layers count as binary where both weights and
            activations are binarized (XNOR-popcount computable), every other layer as float.
        input_size: one input's shape (C, H, W), without batch dimension; the model is run on
            it once, in eval mode, without gradients.

    Returns:
        a ``ModelSummary`` (its rows, totals and the line printed at the start of a run).

    References:
        Counting binary and float operations separately, as binary-network papers report them
        (e.g. Bi-Real Net: Liu et al., ECCV 2018, arXiv:1808.00278).
    """
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
    return _with_file_sizes(ModelSummary(rows), model)


def _with_file_sizes(summary: ModelSummary, model: nn.Module) -> ModelSummary:
    """The summary with the packed file's size, total and per layer (``tbnn.export.file_sizes``)."""
    from .export import file_sizes

    try:
        total, layers = file_sizes(model)
    except Exception as e:  # noqa: BLE001  (a size must not end a run: say why there is no file instead)
        summary.not_exportable = str(e).splitlines()[0] if str(e) else type(e).__name__
        return summary
    summary.file_bytes = total
    for r in summary.rows:
        r.file_bytes = layers.get(r.name, 0)
    return summary


def _input_shape(text: str | None, default_size: int) -> tuple[int, int, int]:
    """(C, H, W) from ``--input``: three positive ints, H = W (the models take square inputs)."""
    if text is None:
        return 3, default_size, default_size
    parts = text.split(",")
    try:
        shape = tuple(int(v) for v in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input must be C,H,W: three positive integers such as 3,{default_size},{default_size}, "
                          f"got {text!r}")
    if shape[1] != shape[2]:
        raise ConfigError(f"--input {text}: height and width must be equal (the models take square inputs)")
    return shape


def _summary(args) -> str:
    from .binarize import preset
    from .models import MODELS, build_model, check_input

    c, h, w = _input_shape(args.input, MODELS[args.model].default_input_size)
    if not (math.isfinite(args.width) and args.width > 0):
        raise ConfigError(f"--width must be a positive number (a factor on every layer's channels), got {args.width}")
    if args.classes < 1:
        raise ConfigError(f"--classes must be at least 1, got {args.classes}")
    try:
        model = build_model(args.model, num_classes=args.classes, in_channels=c, input_size=h, width=args.width,
                            binarize=preset(args.preset))
        check_input(model, c, h)
    except ValueError as e:  # the input too small for the model's strides and poolings
        size = MODELS[args.model].default_input_size
        raise DataError(f"{args.model}: {e} (it is meant for {size}x{size}; give a larger --input)") from e
    return summarize(model, (c, h, w)).to_markdown()


def main(argv=None) -> None:
    """``python -m tbnn.summary MODEL [--input 3,224,224] [--width 1.0] [--preset paper]``; a bad
    option is one line ``error: ...`` on stderr, exit 2 (``tbnn.cli``)."""
    import argparse

    from .binarize import PRESETS
    from .cli import run_guarded
    from .models import MODELS

    ap = argparse.ArgumentParser(prog="python -m tbnn.summary", description="Per-layer bits, bytes and MACs.")
    ap.add_argument("model", choices=MODELS.names())
    ap.add_argument("--input", default=None, help="C,H,W of one input, H = W (default: 3 channels at the "
                                                   "model's default_input_size)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ap.add_argument("--totals", action="store_true", help="print only the totals line")
    args = ap.parse_args(argv)
    text = run_guarded(_summary, args)
    print(text.splitlines()[-1] if args.totals else text)


if __name__ == "__main__":
    main()
