"""Designs whose layers oneDNN's AVX2 kernels hung on train there, within a hard time limit.

oneDNN picks its kernels by the CPU's ISA; ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2 make any x86 CPU
take an AVX2-only CPU's paths, so this runs the kernels an AMD EPYC without AVX-512 runs (issue 18: a 1x1 stride-2
convolution with few input channels hung in jit_avx2_1x1_convolution_bwd_weights, at the second step). Each
design trains for a few seconds (dozens of steps) and is evaluated, on the built-in slice, in a real `python -m
core train` process; a hang is a timeout here, not a test that waits for the watcher's stall limit.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from bench.shortcut_speed import HUNG, SLICE_SPACE, SMALLEST
from core.data.sources import BUILTIN_IMAGES
from core.design.budget import count
from core.design.config import RunConfig
from tests.helpers import ROOT

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
THREADS = {"OMP_NUM_THREADS": "2"}  # a 2-core laptop's; one thread crashed (SIGSEGV) where two hung
DESIGNS = {"hung-7614": HUNG, **{f"smallest-{n}-stages": SMALLEST | {"stages": n} for n in (2, 3, 4)}}
TRAIN_S = 4     # seconds of training: a hung kernel hung at the second step
LIMIT_S = 120   # the process's start, its training and an evaluation take 15-30 s; a hung step never ends


@pytest.mark.parametrize("name", list(DESIGNS))
def test_a_design_that_hung_on_avx2_trains_there(name, tmp_path):
    cfg = SLICE_SPACE.config(DESIGNS[name])
    if name == "hung-7614":
        assert count(cfg.arch).params == 7_614
    config = tmp_path / "config.json"
    config.write_text(json.dumps(RunConfig.from_dict(cfg.to_dict() | {"train": cfg.train.to_dict() | {
        "time_limit": TRAIN_S, "val_fraction": 0.0}}).to_dict()))
    run_dir = tmp_path / name
    try:
        proc = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir",
                               str(run_dir), "--device", "cpu", "--data", "builtin"], cwd=ROOT, capture_output=True,
                              text=True, timeout=LIMIT_S, env=os.environ | AVX2 | THREADS, start_new_session=True)
    except subprocess.TimeoutExpired:
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        subprocess.run(["pkill", "-KILL", "-f", str(run_dir)], check=False)  # its watcher and training process
        pytest.fail(f"{name} did not train {TRAIN_S} s in {LIMIT_S} s under {AVX2}: a kernel hung\n{log[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished", status
    # past the second step, where the kernel hung: the steps it trained, from the epochs it covered (its step
    # lines come every few seconds, so on a busy machine the last of them may be early)
    steps_per_epoch = math.ceil(BUILTIN_IMAGES[0] / cfg.train.batch_size)
    assert status["epoch"] * steps_per_epoch > 2, status
    record = json.loads((run_dir / "record.json").read_text())
    assert "AVX2" in (record["torch"]["onednn_isa"] or "") and record["torch"]["aten_capability"] == "AVX2", record
