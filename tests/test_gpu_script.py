"""benchmarks/gpu.sh in its CPU mode: every step of the prepared GPU run, at a tiny size, so
that the script cannot rot before a GPU machine runs it."""
import json
import os
import subprocess

import pytest

from conftest import REPO, SHARED_DATA, shared


@pytest.mark.slow
def test_gpu_script_cpu_smoke_runs_every_step(tmp_path):
    shared("cifar10_jpeg")
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--cpu-smoke", str(out)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "TBNN_SHARED_DATA": str(SHARED_DATA)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    step = json.loads((out / "step_time.json").read_text())
    assert set(step["binary_over_float"]) == {"eager", "compiled"} and all(v > 0 for v in step["median_s"].values())
    assert json.loads((out / "loader.json").read_text())["device_over_workers"] > 0
    assert json.loads((out / "epochs.json").read_text())["epoch_s"]["device"] > 0
    assert json.loads((out / "paper_run" / "metrics.json").read_text())["status"] == "finished"
    summary = (out / "SUMMARY.md").read_text()
    assert "## step_time.json" in summary and "paper recipe" in summary and "no CUDA device" in summary
