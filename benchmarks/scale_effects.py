"""Which scales act, per model, block order and cancelled_scales policy (docs/scales.md).

    python benchmarks/scale_effects.py

For every binary layer with scales, alpha acts when multiplying it changes the logits and
it receives gradient (float64, BatchNorm eps ~0; see tbnn.binarize.diagnostics).
"""
import torch

from tbnn.binarize import binary_layers, preset
from tbnn.binarize.diagnostics import scale_effects
from tbnn.models import build_model

CASES = [
    ("vgg_small", dict(width=0.25), (3, 32, 32)),
    ("alexnet", dict(width=0.25, num_classes=100), (3, 224, 224)),
    ("resnet18", dict(width=0.25, stem="cifar"), (3, 32, 32)),
    ("resnet18", dict(width=0.25, stem="cifar", bireal=True), (3, 32, 32)),
]


def main():
    torch.manual_seed(0)
    print("| model | block_order | cancelled_scales | binary layers | with scales | alpha acts | beta acts "
          "| max rel. grad of a non-acting alpha |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kw, size in CASES:
        for order in ("bn_conv", "conv_bn"):
            for policy in ("drop", "keep"):
                model = build_model(name, binarize=preset("paper"), block_order=order, cancelled_scales=policy, **kw)
                effects = scale_effects(model, torch.randn(8, *size))
                alphas = [e for e in effects if e.scale == "alpha"]
                betas = [e for e in effects if e.scale == "beta"]
                idle = max((e.grad_norm for e in alphas if not e.acts()), default=None)
                label = name + (" (bireal)" if kw.get("bireal") else "")
                print(f"| {label} | {order} | {policy} | {len(binary_layers(model))} | {len(alphas)} "
                      f"| {sum(e.acts() for e in alphas)} | {sum(e.acts() for e in betas)} "
                      f"| {'-' if idle is None else f'{idle:.1e}'} |")


if __name__ == "__main__":
    main()
