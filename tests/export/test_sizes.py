"""The packed size that metrics.json, the printed report and ``tbnn.summary`` give is the size
of the file the exporter writes, for every registered model (and its options)."""
import pytest
import torch

from tbnn.binarize import preset
from tbnn.export import export, file_sizes
from tbnn.models import MODELS, build_model
from tbnn.outputs import size_fields
from tbnn.summary import summarize

# (model, options, input shape): every registered model at its own input size, plus the options
# that change what the file holds (shortcuts, order, odd channel counts, the sizes users quoted).
DEFAULTS = [(name, dict(width=0.125), (3, MODELS[name].default_input_size, MODELS[name].default_input_size))
            for name in MODELS.names()]
OPTIONS = [
    ("vgg_small", dict(width=0.25), (1, 28, 28)),   # once reported as 86,060 B (1 bit a weight)
    ("vgg_small", dict(width=0.2, block_order="conv_bn"), (3, 32, 32)),
    ("alexnet", dict(width=0.125, fc_width=520), (3, 96, 96)),
    ("resnet18", dict(width=0.25, stem="cifar", bireal=True, downsample="binary"), (3, 32, 32)),
    ("resnet20", dict(), (3, 32, 32)),                                               # once reported as 55,756 B
    ("resnet20", dict(width=0.5, bireal=True, block_order="conv_bn"), (3, 32, 32)),
]


def _warmed(name, kwargs, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0], input_size=shape[-1], binarize=preset("paper"),
                        **kwargs).train()
    with torch.no_grad():
        model(torch.randn(4, *shape))
    return model.eval()


@pytest.mark.parametrize("name,kwargs,shape", DEFAULTS + OPTIONS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(DEFAULTS + OPTIONS)])
def test_reported_packed_size_is_the_written_files(name, kwargs, shape, tmp_path):
    model = _warmed(name, kwargs, shape)
    s = summarize(model, shape)
    fields = size_fields(model, shape[0], shape[-1])
    written = export(model, tmp_path / "m.tbnn")
    assert s.packed_bytes == fields["bytes_packed"] == written == (tmp_path / "m.tbnn").stat().st_size
    assert fields["bytes_packed_is"].startswith("size of the .tbnn file")
    # the per-layer column adds up to the file: layers' tensors + header and checksum
    assert 0 < sum(r.file_bytes for r in s.rows) < s.file_bytes
    text = s.to_markdown()
    assert "(file header, checksum)" in text and f"packed file {written:,} B (" in text


def test_size_and_export_keep_the_models_mode(tmp_path):
    model = build_model("resnet20", num_classes=10, width=0.25).train()
    summarize(model, (3, 32, 32))
    export(model, tmp_path / "m.tbnn")
    assert model.training and all(m.training for m in model.modules())


def test_metadata_is_part_of_the_file():
    """src/export.py adds its metadata to the header: ``file_sizes`` with that meta is its size."""
    model = _warmed("vgg_small", dict(width=0.125), (3, 32, 32))
    meta = {"model": {"name": "vgg_small", "width": 0.125}, "checkpoint": "outputs/train/x/checkpoints/last.ckpt",
            "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    bare, _ = file_sizes(model)
    with_meta, _ = file_sizes(model, meta=meta)
    assert with_meta > bare


def test_a_model_the_format_cannot_hold_gets_the_estimate_named_as_such(tmp_path):
    model = build_model("resnet20", num_classes=10, width=0.25, activation="rprelu")
    s = summarize(model, (3, 32, 32))
    assert s.file_bytes is None and s.packed_bytes == s.estimated_bytes
    d = s.as_dict()
    assert d["bytes_packed_is"].startswith("estimate") and "RPReLU" in d["bytes_packed_is"]
    assert "packed estimate" in s.to_markdown().splitlines()[-1]
