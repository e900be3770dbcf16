"""core.runs.speeds: devices and speeds kept on disk, a probe in a real process, and estimates scaled by MACs."""
import fcntl
import json
import os
import platform
import subprocess
import sys

import pytest

from core.design.budget import count
from core.measure.probe import probe
from core.runs.speeds import (EVAL_COST, epoch_seconds, estimate, kernels_text, known_devices, probe_lock_path,
                              probe_running, read_machine, record_run_speed, record_speed, update_machine)
from core.design.presets import preset_spec
from tests.helpers import ROOT


def test_an_epoch_counts_evaluation_as_a_forward_pass():
    assert epoch_seconds(100.0, 5000, 1000) == pytest.approx((5000 + EVAL_COST * 1000) / 100)


def test_an_estimate_scales_the_kept_speed_by_the_designs_macs(cache):
    small, large = count(preset_spec("resnet20")).macs, count(preset_spec("resnet26-seed")).macs
    assert estimate(preset_spec("resnet20"), "cpu", "builtin") is None  # nothing known yet
    update_machine(lambda machine: machine | {"devices": {"cpu": "CPU"}})
    record_speed("cpu", "CPU", 200.0, small, "timed on resnet20")
    same = estimate(preset_spec("resnet20"), "cpu", "builtin")
    assert same.images_per_s == pytest.approx(200.0) and same.source == "timed on resnet20"
    assert same.epoch_s == pytest.approx((5_000 + 1_000 / 3) / 200.0)  # the built-in slice
    bigger = estimate(preset_spec("resnet26-seed"), "cpu", "/some/copy")
    assert bigger.images_per_s == pytest.approx(200.0 * small / large)
    assert bigger.epoch_s == pytest.approx((50_000 + 10_000 / 3) / bigger.images_per_s)  # a full copy


def test_a_speed_of_another_gpu_under_the_same_name_is_not_used(cache):
    update_machine(lambda machine: machine | {"devices": {"cuda:0": "NVIDIA H100", "cpu": "CPU"}})
    record_speed("cuda:0", "NVIDIA A100", 5000.0, 10**8, "timed on resnet20")
    assert estimate(preset_spec("resnet20"), "cuda:0", "builtin") is None


def test_a_run_smaller_than_the_reference_does_not_replace_the_speed(cache):
    reference = count(preset_spec("resnet20")).macs
    record_speed("cpu", "CPU", 200.0, reference, "timed on resnet20")
    record_run_speed("cpu", "CPU", 3000.0, reference // 50, "tiny")
    assert read_machine()["speeds"]["cpu"]["source"] == "timed on resnet20"
    record_run_speed("cpu", "CPU", 150.0, reference, "same-size")
    assert read_machine()["speeds"]["cpu"]["source"] == "run same-size"


def test_a_damaged_machine_file_reads_as_unknown(cache):
    cache.mkdir()
    (cache / "machine.json").write_text("{not json")
    assert read_machine() == {} and known_devices() is None
    record_speed("cpu", "CPU", 10.0, 10**8, "timed on resnet20")
    assert read_machine()["speeds"]["cpu"]["images_per_s"] == 10.0


def test_a_probe_finds_the_cpu_times_it_once_and_again_when_asked(cache):
    first = probe(seconds=0.1)
    assert first["devices"]["cpu"] == "CPU"
    cpu = first["speeds"]["cpu"]
    assert cpu["images_per_s"] > 0 and cpu["source"] == "timed on resnet20" and cpu["name"] == "CPU"
    assert cpu["macs_per_s"] == pytest.approx(cpu["images_per_s"] * count(preset_spec("resnet20")).macs)
    assert probe()["speeds"]["cpu"]["when"] == cpu["when"]  # kept, not timed again
    assert probe(again=True, seconds=0.1)["speeds"]["cpu"]["when"] > cpu["when"]


def test_a_second_probe_leaves_at_once_while_one_runs(cache):
    cache.mkdir()
    fd = os.open(probe_lock_path(), os.O_RDWR | os.O_CREAT)
    try:
        assert not probe_running()
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a probe holds it while it looks
        assert probe_running()
        out = subprocess.run([sys.executable, "-m", "core", "machine"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert json.loads(out.stdout) == {}  # it found the lock taken and left without looking
    finally:
        os.close(fd)
    assert not probe_running()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the ISA caps are x86's")
def test_core_machine_says_which_kernels_run_here_and_sees_an_avx2_cap(cache):
    env = os.environ | {"RESNET_STUDIO_CACHE": str(cache), "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-m", "core", "machine", "--seconds", "0.1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cpu = json.loads(done.stdout)["cpu"]
    assert "AVX2" in cpu["onednn_isa"] and "AVX-512" not in cpu["onednn_isa"] and cpu["aten_capability"] == "AVX2"
    assert cpu["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    line = kernels_text(cpu)
    assert f"oneDNN {cpu['onednn_isa']}" in line and "ATen AVX2" in line and "capped by ONEDNN_MAX_CPU_ISA=AVX2" in line
    assert f"onnxruntime int8 {cpu['int8_kernels']}" in line and cpu["cpu"] in line
