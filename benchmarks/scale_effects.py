"""Table: which scales act in each model and block order (docs/scales.md).

    python benchmarks/scale_effects.py > docs/scale_effects_table.md
"""
import torch

from tbnn.binarize import preset
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
    print("| model | block_order | alpha acts (layers) | beta acts (layers) | median rel. output change (alpha) "
          "| median |grad alpha|*|alpha| |")
    print("|---|---|---|---|---|---|")
    for name, kw, size in CASES:
        for order in ("bn_conv", "conv_bn"):
            model = build_model(name, binarize=preset("paper"), block_order=order, **kw)
            effects = scale_effects(model, torch.randn(8, *size))
            label = name + (" (bireal)" if kw.get("bireal") else "")
            row = [label, order]
            for s in ("alpha", "beta"):
                es = [e for e in effects if e.scale == s]
                row.append(f"{sum(e.acts() for e in es)} / {len(es)}")
            alphas = [e for e in effects if e.scale == "alpha"]
            mid = len(alphas) // 2
            row.append(f"{sorted(e.output_change for e in alphas)[mid]:.2e}")
            row.append(f"{sorted(e.grad_norm for e in alphas)[mid]:.2e}")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
