"""init_from=: a new run whose weights start from another run's checkpoint (by parameter name),
everything else its own: a full-precision run, a stage-1 run, another binarization."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FEW_BATCHES, read_metrics, run_cli, tree
from tbnn.binarize import binary_layers, preset
from tbnn.checkpoints import init_weights
from tbnn.errors import CheckpointError
from tbnn.models import build_model

SMALL = ["model.width=0.0625", "data.val_size=500", "logger=csv", *FEW_BATCHES, "trainer.limit_train_batches=3"]


def _net(binarize: str, width: float = 0.25):
    return build_model("vgg_small", num_classes=10, in_channels=1, input_size=28, width=width,
                       binarize=preset(binarize))


def _checkpoint(net) -> dict:
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking statistics, unlike a new network's
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.1)
    return {"state_dict": {f"net.{k}": v.clone() for k, v in net.state_dict().items()}, "global_step": 70, "epoch": 3}


def test_a_binary_network_takes_a_full_precision_networks_weights_and_its_scales_follow_them():
    ckpt = _checkpoint(_net("none"))
    net = _net("paper")
    done = init_weights(net, ckpt, "fp.ckpt")
    state = net.state_dict()
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(state[key[len("net."):]], value), key  # every weight and statistic, exactly
    for name, layer in binary_layers(net):
        if layer.weight_scale is not None:  # alpha = mean|W| of the loaded W
            assert torch.equal(layer.weight_scale, layer.weight.abs().mean(dim=(1, 2, 3))), name
        if layer.act_scale is not None:
            assert torch.equal(layer.act_scale, torch.ones_like(layer.act_scale))
    assert done["loaded"] == len(ckpt["state_dict"]) and done["not_loaded"] == [] and done["global_step"] == 70


def test_batchnorm_statistics_are_kept_or_reset_and_scales_recomputed_or_loaded():
    ckpt = _checkpoint(_net("paper"))
    fresh = _net("paper").state_dict()
    net = _net("paper")
    init_weights(net, ckpt, "b.ckpt", bn_stats="reset")
    state = net.state_dict()
    assert torch.equal(state["features.1.running_var"], fresh["features.1.running_var"])  # reset
    assert torch.equal(state["features.1.weight"], ckpt["state_dict"]["net.features.1.weight"])  # BN's affine: loaded
    scale = next(k for k in state if k.endswith("weight_scale"))
    assert not torch.equal(state[scale], ckpt["state_dict"][f"net.{scale}"])  # recomputed from the weights
    init_weights(net, ckpt, "b.ckpt", scales="load")
    assert torch.equal(net.state_dict()[scale], ckpt["state_dict"][f"net.{scale}"])


def test_a_network_that_does_not_fit_by_name_is_refused_unless_partial():
    ckpt = _checkpoint(_net("none", width=0.125))
    net = _net("paper")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        init_weights(net, ckpt, "narrow.ckpt")
    assert "init_from=narrow.ckpt does not fit the configured network by name" in str(e.value)
    assert "other shapes (" in str(e.value) and "features.0.weight (16, 1, 3, 3) -> (32, 1, 3, 3)" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded
    done = init_weights(net, ckpt, "narrow.ckpt", partial=True)
    assert "features.0.weight" in done["not_loaded"] and done["loaded"] > 0


def test_a_run_initialised_from_a_full_precision_run_trains_records_it_and_resumes(fmnist_dir, tmp_path):
    fp = tmp_path / "fp"
    r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, "binarize=none", f"hydra.run.dir={fp}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    source = fp / "checkpoints" / "last.ckpt"
    run = tmp_path / "binary"
    r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, f"init_from={source}", "init_bn_stats=reset",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"initialised from {source.resolve()}" in r.stdout
    init = json.loads((run / "record.json").read_text())["initialised_from"]
    assert init["path"] == str(source.resolve()) and init["bn_stats"] == "reset" and init["not_loaded"] == []
    assert read_metrics(run)["global_step"] == 3  # its own schedule from step 0, not the source's
    resumed = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_metrics(run)["global_step"] == 6
    before = tree(tmp_path)
    for bad, words in ((["model.width=0.125"], "does not fit the configured network by name"),
                       ([f"ckpt_path={source}"], "not both")):
        r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, f"init_from={source}", *bad,
                    f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert tree(tmp_path) == before and not (tmp_path / "refused").exists()
