"""The README's "how to add" recipes, followed as written: a toy model and a toy surrogate
added through the registries train a few steps through the real job; a data module registered
the same way is found by name and its options are checked like a model's."""
import pytest
import torch
from torch import nn

from conftest import FEW_BATCHES, read_metrics, run_job
from tbnn.binarize import SURROGATES, BinarizeConfig, BinaryConv2d, binary_sign
from tbnn.models import MODELS


class TinyCNN(nn.Module):
    """The README's example model: one full-precision conv, one binary conv, a classifier."""

    default_input_size = 28

    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=1.0, binarize=None):
        super().__init__()
        c = max(1, int(32 * width))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c))
        self.body = BinaryConv2d(c, c, 3, padding=1, config=binarize or BinarizeConfig())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def triangle(x, width: float = 1.0):
    """The README's example surrogate, with a parameter: max(0, 1 - |x| / width) / width."""
    return (1 - x.abs() / width).clamp_min(0) / width


def narrowing(x, progress=0.0, start: float = 1.0, end: float = 0.25):
    """The README's example scheduled surrogate: a triangle whose width goes from start to end."""
    width = start + (end - start) * progress
    return (1 - x.abs() / width).clamp_min(0) / width


@pytest.fixture
def registered():
    MODELS.register("tiny_cnn")(TinyCNN)
    SURROGATES.register("triangle")(triangle)
    SURROGATES.register("narrowing")(narrowing)
    yield
    del MODELS["tiny_cnn"], SURROGATES["triangle"], SURROGATES["narrowing"]


def test_a_toy_model_and_surrogate_added_through_the_registries_train(registered, fmnist_dir, tmp_path):
    code, _ = run_job("train", f"data.root={fmnist_dir}", "model.name=tiny_cnn", "binarize.weight_grad=triangle",
                      "binarize.act_grad=triangle", *FEW_BATCHES, "trainer.limit_train_batches=5", "logger=none",
                      run_dir=tmp_path / "run")
    assert code == 0
    m = read_metrics(tmp_path / "run")
    assert m["model"] == "tiny_cnn" and m["binarize"]["weight_grad"] == "triangle" and m["params_binary"] > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["hyper_parameters"]["config"]["model"]["name"] == "tiny_cnn" and state["global_step"] == 5


def test_a_parametrised_and_a_scheduled_surrogate_take_their_settings(registered, fmnist_dir, tmp_path, capsys):
    args = [f"data.root={fmnist_dir}", "model.name=tiny_cnn", "binarize.weight_grad=triangle",
            "binarize.act_grad=narrowing", *FEW_BATCHES, "trainer.limit_train_batches=4", "logger=none"]
    code, _ = run_job("train", *args, "binarize.surrogate_params.triangle.width=0.5",
                      "binarize.surrogate_params.narrowing.end=0.5", run_dir=tmp_path / "run")
    assert code == 0
    params = read_metrics(tmp_path / "run")["binarize"]["surrogate_params"]
    assert params["triangle"] == {"width": 0.5} and params["narrowing"] == {"start": 1.0, "end": 0.5}
    # the layer calls them with those settings, the scheduled one with the layer's progress
    layer = BinaryConv2d(2, 2, 3, config=BinarizeConfig(weight_grad="triangle", act_grad="narrowing",
                                                         surrogate_params=params))
    layer.progress.fill_(0.5)
    w = layer.weight.detach().clone().requires_grad_()
    binary_sign(w, "triangle", **layer._grad_params("weight")).sum().backward()
    assert torch.equal(w.grad, triangle(w.detach(), width=0.5))
    assert layer._grad_params("act") == {"start": 1.0, "end": 0.5, "progress": layer.progress}
    code, err = run_job("train", *args, "+binarize.surrogate_params.triangle.slope=2", run_dir=tmp_path / "bad",
                        capsys=capsys)
    assert code == 2 and "binarize.surrogate_params.triangle.slope is not a parameter of surrogate 'triangle' " \
        "(its parameters: width)" in err


def test_a_registered_surrogate_gives_its_gradient(registered):
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0], requires_grad=True)
    binary_sign(x, "triangle").sum().backward()  # its default width
    assert torch.equal(x.grad, triangle(x.detach()))


def test_options_a_model_does_not_take_are_refused(registered, fmnist_dir, tmp_path, capsys):
    code, err = run_job("train", f"data.root={fmnist_dir}", "model.name=tiny_cnn", "model.block_order=conv_bn",
                        *FEW_BATCHES, run_dir=tmp_path / "run", capsys=capsys)
    assert code == 2 and "model.block_order='conv_bn' is not an option of model 'tiny_cnn'" in err
