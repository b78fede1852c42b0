"""The methods of the peers' table as config choices: each option of conf/method composes from
the CLI and trains (fast_dev_run) on VGG-Small and ResNet-20; distillation from a
full-precision teacher (its loss, the teacher's mode and gradients, refusals, DDP); Bop's
configuration rule; the sweep file that produces the table."""
from pathlib import Path

import pytest
import torch

from conftest import CONF, FAST, read_metrics, run_job

METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
TINY = ["experiment=methods_cifar10", "model.width=0.125", "data.val_size=0.25", "data.batch_size=32",
        "data.eval_batch_size=64", *FAST]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_cifar):
    """A full-precision checkpoint of the tiny CIFAR task (one short epoch)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    code, _ = run_job("train", "method=fp", "model=vgg_small", f"data.root={tiny_cifar}", *TINY,
                      "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", run_dir=run)
    assert code == 0
    return run / "checkpoints" / "last.ckpt"


def test_every_method_of_the_table_is_a_config_option():
    assert {"fp", "paper", "xnor", "bnn", "bireal", "xnorpp", "reactnet", "paper_distill", "paper_bop"} <= set(METHODS)


#: methods whose pieces the packed format does not hold yet (export refuses them, naming the layer)
NOT_EXPORTABLE = {"xnorpp": "output scale", "reactnet": "RSign"}


@pytest.mark.parametrize("model", ["vgg_small", pytest.param("resnet20", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_evaluates_and_exports(method, model, tiny_cifar, teacher, tmp_path):
    """Every model a run can produce: its checkpoint evaluates (on the recorded data, no data=
    given) and exports, the packed file predicting as PyTorch (export checks it on reload)."""
    from conftest import compose_cfg
    from tbnn.errors import ExportError
    from tbnn.export.cli import export_checkpoint

    extra = [f"distill.teacher={teacher}"] if method == "paper_distill" else []
    code, _ = run_job("train", f"method={method}", f"model={model}", f"data.root={tiny_cifar}", *TINY, *extra,
                      "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                      "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", run_dir=tmp_path / "run")
    assert code == 0
    m = read_metrics(tmp_path / "run")
    assert m["model"] == model and m["status"] == "finished" and m["method"] == method
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    code, _ = run_job("evaluate", f"ckpt_path={ckpt}", "trainer.limit_test_batches=1", run_dir=tmp_path / "eval")
    assert code == 0 and read_metrics(tmp_path / "eval")["data"] == "cifar10"
    cfg = compose_cfg(f"ckpt_path={ckpt}", f"out={tmp_path / 'm.tbnn'}", config="export")
    if method in NOT_EXPORTABLE:
        with pytest.raises(ExportError, match="layer"):
            export_checkpoint(cfg)
        return
    result = export_checkpoint(cfg)
    assert result["check_agree"] == result["check_total"]


def test_distillation_loss_is_the_kl_to_the_frozen_teacher(teacher, tiny_cifar):
    from conftest import compose_cfg
    from tbnn.config import validate_config
    from tbnn.module import KLDistillation, module_from_record
    from tbnn.record import RunRecord

    c = validate_config(compose_cfg("method=paper_distill", f"distill.teacher={teacher}", "distill.temperature=2.0",
                                    "model=vgg_small", *TINY))
    module = module_from_record(RunRecord.for_task(c, 10, 3, 32, "cifar10"))
    (term,) = [t for t in module.loss_terms if t.name == "distill"]
    assert isinstance(term.fn, KLDistillation) and term.weight == 1.0
    teacher_net = term.fn.teacher
    module.train()  # Lightning's train mode must not reach the teacher
    assert not teacher_net.training and not any(p.requires_grad for p in teacher_net.parameters())
    x = torch.randn(8, 3, 32, 32)
    logits = module(x)
    loss = term.fn(module.net, x, logits, None)
    with torch.no_grad():
        p = torch.softmax(teacher_net(x) / 2.0, 1)
    q = torch.log_softmax(logits / 2.0, 1)
    want = (p * (p.log() - q)).sum(1).mean() * 4.0
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())


def test_distillation_refuses_a_binary_teacher_or_another_task(tiny_cifar, fmnist_dir, teacher, tmp_path, capsys):
    binary = tmp_path / "binary"
    assert run_job("train", "method=paper", "model=vgg_small", f"data.root={tiny_cifar}", *TINY,
                   "trainer.max_epochs=1", "trainer.limit_train_batches=1", run_dir=binary)[0] == 0
    code, err = run_job("train", "method=paper_distill", f"distill.teacher={binary / 'checkpoints' / 'last.ckpt'}",
                        "model=vgg_small", f"data.root={tiny_cifar}", *TINY, "trainer.fast_dev_run=true",
                        run_dir=tmp_path / "run", capsys=capsys)
    assert code == 2 and "is not a full-precision network of the same task: the teacher is binarized" in err
    code, err = run_job("train", "method=paper_distill", f"distill.teacher={teacher}", "data=fashion_mnist",
                        f"data.root={fmnist_dir}", "model.width=0.125", *FAST, "trainer.fast_dev_run=true",
                        run_dir=tmp_path / "run2", capsys=capsys)
    assert code == 2 and "in_channels: teacher 3 vs student 1" in err


@pytest.mark.slow
def test_distillation_under_ddp_logs_its_term(teacher, tiny_cifar, tmp_path):
    code, _ = run_job("train", "method=paper_distill", f"distill.teacher={teacher}", "model=vgg_small",
                      f"data.root={tiny_cifar}", *TINY, "trainer=ddp_sim", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                      "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "logger=csv",
                      run_dir=tmp_path / "run")
    assert code == 0
    log = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "train/distill_step" in log and "train/ce_step" in log and "train/loss_step" in log


def test_bop_needs_a_weight_surrogate_with_gradient_at_plus_minus_one(capsys, tmp_path, tiny_cifar):
    code, err = run_job("train", "method=paper_bop", "binarize.weight_grad=tight", f"data.root={tiny_cifar}", *TINY,
                        run_dir=tmp_path / "run", capsys=capsys)
    assert code == 2 and "optim=bop needs binarize.weight_grad=ste or clipped_ste, got 'tight'" in err


def test_methods_sweep_plans_every_method_on_both_networks():
    import yaml

    cfg = yaml.safe_load((Path(CONF).parent / "sweeps" / "methods_cifar10.yaml").read_text())
    p = cfg["parameters"]
    assert set(p["method"]["values"]) == set(METHODS) and set(p["model"]["values"]) == {"vgg_small", "resnet20"}
    assert len(p["seed"]["values"]) >= 3
