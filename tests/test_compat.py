"""The touchpoints of Lightning's and W&B's internals (tbnn.compat), against the installed
versions: each exists and does what tbnn relies on."""
from __future__ import annotations

import importlib.metadata

import lightning as L
import pytest
from packaging.version import Version

from tbnn import compat


def test_installed_versions_are_in_the_tested_range():
    for package, (low, high) in compat.TESTED.items():
        have = Version(importlib.metadata.version(package))
        assert Version(low) <= have < Version(high), (package, have)


def test_pyproject_pins_the_tested_upper_versions():
    import tomllib

    from conftest import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, (low, high) in compat.TESTED.items():
        spec = next(d for d in deps if d.split("[")[0].split(">")[0].split("<")[0] == package)
        assert f">={low}" in spec and f"<{high}" in spec, spec


def test_the_stop_flag_is_the_one_lightnings_loops_read():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert not compat.stop_requested(trainer)
    compat.request_stop(trainer)
    assert trainer.received_sigterm and compat.stop_requested(trainer)
    compat.request_stop(trainer, False)
    assert not trainer.received_sigterm


def test_the_csv_writer_has_what_tbnn_overrides(tmp_path):
    writer = compat.ExperimentWriter(str(tmp_path))
    for name in ("_check_log_dir_exists", "_rewrite_with_new_header", "log_metrics", "save", "metrics_file_path"):
        assert hasattr(writer, name), name


def test_a_checkpoint_records_its_epochs_where_epochs_done_reads(tmp_path):
    import torch

    model = torch.nn.Linear(2, 2)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, i):
            return self.net(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=str(tmp_path), enable_model_summary=False)
    trainer.fit(Tiny(), data)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=False)
    assert compat.epochs_done(ckpt) == 2


@pytest.mark.integration  # a W&B run (its service process)
@pytest.mark.parametrize("rows", [3, 600])  # one block, and records across W&B's 32 KiB blocks
def test_the_wandb_transaction_log_parser_reads_what_wandb_writes(rows, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(dir=str(tmp_path), project="compat", settings=wandb.Settings(console="off"))
    for step in range(rows):
        run.log({"trainer/global_step": step, "loss": 1.0 / (step + 1), "pad": "x" * 100})
    run.finish()
    wandb.teardown()  # finish() may return before W&B's service has written the log's tail (a process exit waits)
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    got = compat.wandb_history(path)
    assert [s for s, _ in got] == list(range(rows))
    assert all({"loss", "pad", "trainer/global_step"} <= keys for _, keys in got)
