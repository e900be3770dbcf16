"""bench/airbench_cpu.py: airbench94's own code (airbench==0.1.8) trains on the CPU, in a real process, through the
script's dry run (the built-in slice, tiny runs): it calibrates, picks the epochs, prints airbench's own table,
and learns."""
import json
import subprocess
import sys

from core.nn.infer import amp_policy
from core.runs.speeds import kernels_text
from tests.helpers import ROOT


def anchor(out, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.airbench_cpu", str(out), "--dry-run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|   eval  |" in (out / "airbench_cpu.log").read_text()  # airbench's own last row, with its TTA
    report = json.loads((out / "airbench_cpu.json").read_text())
    assert kernels_text(report["cpu"]) in proc.stdout  # the summary names the kernels that ran, caps included
    return report


def test_airbench94_gets_the_epochs_that_fill_the_minutes(tmp_path):
    report = anchor(tmp_path)
    (row,) = report["rows"]
    calibration = report["calibration"]
    assert calibration["seconds_per_epoch"] > 0
    assert abs(row["epochs"] - 0.1 * 60 / calibration["seconds_per_epoch"]) <= 0.05  # 0.1 minutes in a dry run
    assert row["amp"] == report["amp"] == amp_policy("cpu", None, "auto").name
    assert 0 < row["trained_seconds"] < row["its_seconds"] <= row["wall_seconds"]  # its final TTA comes last


def test_airbench94_learns_on_the_cpu(tmp_path):
    report = anchor(tmp_path, "--epochs", "2")
    (row,) = report["rows"]
    assert row["epochs"] == 2 and row["params"] == 1_971_352  # airbench94's net, as make_net94 builds it
    assert row["accuracy"] > 0.15  # 1,000 test images, chance is 10%
