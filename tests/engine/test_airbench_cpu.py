"""bench/airbench_cpu.py: airbench94's own code (airbench==0.1.8) trains on the CPU, in a real process, through the
script's dry run (the built-in slice, at the minutes its calibration says an epoch takes here): it calibrates,
picks the epochs that fill the minutes, prints airbench's own table and the kernels it ran on, learns, and leaves
no copy of the data behind."""
import json
import os
import subprocess
import sys

import pytest

from bench.airbench_cpu import DRY_RUN_EPOCHS
from core.nn.infer import amp_policy
from core.runs.speeds import kernels_text
from tests.helpers import ROOT


@pytest.mark.long
def test_airbench94_trains_the_epochs_that_fill_the_minutes_on_the_cpu_and_learns(tmp_path):
    scratch = tmp_path / "tmp"  # where its copy of the data in airbench's format goes, and must not stay
    scratch.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.airbench_cpu", str(out), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=os.environ | {"TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "airbench data: " + str(scratch) in (out / "airbench_cpu.log").read_text()
    assert not list(scratch.glob("airbench-cpu-*"))  # torch may leave its compiler's cache there
    assert "|   eval  |" in (out / "airbench_cpu.log").read_text()  # airbench's own last row, with its TTA
    report = json.loads((out / "airbench_cpu.json").read_text())
    assert kernels_text(report["cpu"]) in proc.stdout  # the summary names the kernels that ran, caps included
    (row,) = report["rows"]
    seconds_per_epoch = report["calibration"]["seconds_per_epoch"]
    assert seconds_per_epoch > 0
    assert row["epochs"] == round(row["minutes"] * 60 / seconds_per_epoch, 1) == DRY_RUN_EPOCHS
    assert row["amp"] == report["amp"] == amp_policy("cpu", None, "auto").name
    assert row["params"] == 1_971_352  # airbench94's net, as its make_net94 builds it
    assert 0 < row["trained_seconds"] < row["its_seconds"] <= row["wall_seconds"]  # its final TTA comes last
    assert row["accuracy"] > 0.15  # an epoch of 5,000 images; 1,000 test images, chance is 10%
