"""The GPU path on a real CUDA device (run by benchmarks/gpu.sh on a lent GPU machine; skipped
with the reason elsewhere). Their CPU counterparts run in the default suite:
binarize/test_speed_paths.py, data/test_data.py (device loader), test_ddp.py."""
from __future__ import annotations

import pytest
import torch

from conftest import FAST, read_metrics, run_job
from tbnn.binarize import BinaryConv2d, BinaryLinear, preset
from tbnn.models import build_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def _grads(layer, x, r, dtype=None):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = layer(x)
    (out.float() * r).sum().backward()
    return {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_mixed_precision_gradients_within_tolerance_of_float32(kind, dtype):
    torch.manual_seed(0)
    layer = (BinaryConv2d(64, 32, 3, padding=1, config=preset("paper")) if kind == "conv"
             else BinaryLinear(256, 32, config=preset("paper"))).cuda()
    x = (torch.randn(8, 64, 16, 16) if kind == "conv" else torch.randn(8, 256)).cuda()
    r = torch.randn_like(layer(x))
    ref, got = _grads(layer, x, r), _grads(layer, x, r, dtype)
    for name, g in got.items():
        assert g.dtype == torch.float32 and (g - ref[name]).norm() <= 2e-2 * ref[name].norm(), name


def test_channels_last_and_compile_give_the_eager_loss():
    torch.manual_seed(0)
    net = build_model("vgg_small", width=0.5, binarize=preset("paper")).cuda()
    x, y = torch.randn(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, benchmark=False):
        ref = torch.nn.functional.cross_entropy(net(x), y)
        net = net.to(memory_format=torch.channels_last)
        cl = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
        net.compile()
        comp = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
    assert torch.allclose(cl, ref, rtol=1e-4) and torch.allclose(comp, ref, rtol=1e-4)


def test_device_loader_on_cuda_keeps_labels_and_exact_resume(fmnist_dir):
    from tbnn.data.base import DeviceLoader, EpochShuffleSampler
    from tbnn.data.fashion_mnist import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=str(fmnist_dir), train_subset=1000, val_size=100)
    dm.setup()
    x, y = dm.train_set.x, dm.train_set.y
    loader = DeviceLoader(x.cuda(), y.cuda(), 64, EpochShuffleSampler(len(y), 0), drop_last=True)
    batches = [(bx.cpu(), by.cpu()) for bx, by in loader]
    order = EpochShuffleSampler(len(y), 0).order()[: len(batches) * 64]
    assert torch.equal(torch.cat([b[1] for b in batches]).sort().values, y[order].sort().values)
    assert torch.equal(torch.cat([b[0] for b in batches]), x[order])
    loader.sampler.skip = 5 * 64
    assert torch.equal(next(iter(loader))[1].cpu(), batches[5][1])


def test_ddp_nccl_world_size_one_fast_dev_run(fmnist_dir, tmp_path):
    code, _ = run_job("train", f"data.root={fmnist_dir}", "trainer=ddp", "trainer.devices=1",
                      "trainer.fast_dev_run=true", *FAST, run_dir=tmp_path / "run")
    assert code == 0 and read_metrics(tmp_path / "run")["status"] == "finished"


def test_gpu_trained_checkpoint_exports_and_the_cpu_engine_predicts_as_the_gpu_model(fmnist_dir, tmp_path):
    from tbnn.checkpoints import load_module
    from tbnn.export import export, load

    code, _ = run_job("train", f"data.root={fmnist_dir}", "trainer=gpu", "model.width=0.25", "data.train_subset=2048",
                      "data.val_size=256", "trainer.max_epochs=1", *FAST, run_dir=tmp_path / "run")
    assert code == 0
    module, _ = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    net = module.net.eval()
    export(net, tmp_path / "m.tbnn", meta={"in_channels": 1, "input_size": 28})
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        gpu = net.cuda()(x.cuda()).argmax(1).cpu()
    assert torch.equal(load(tmp_path / "m.tbnn")(x).argmax(1), gpu)
