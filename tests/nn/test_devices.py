"""Devices as students have them, without them: running out of memory (simulated in a real training process) and
resuming with a smaller batch; P100, V100, T4, A100, H100 and Apple silicon with torch.cuda and torch.backends.mps
mocked (the wheel's arch list, the driver, mps); the queue's GPU locks by UUID."""
import json

import pytest
import torch

from core.errors import StudioError
from core.nn import gpu
from core.nn.infer import amp_policy, auto_device, pick_device
from core.measure.probe import find_devices
from core.nn.platform import device_name, tf32_in_use
from core.runs import queue
from core.runs.queue import DeviceRequest, plan
from core.runs.run import Run
from core.runs.speeds import device_label
from tests.helpers import QUICK_ARCH, SMALL, core_cli, sitecustomize

# For sitecustomize: with OOM_ABOVE, a training step on more than that many images raises torch's out-of-memory
# error, with the allocation a CUDA one names; with FAKE_DRIVER, the machine has an NVIDIA driver of that version
# (which cannot run this torch: there is no GPU).
PATCHES = '''
    def out_of_memory(module):
        step = module.Trainer.step

        def patched(self, images, *args):
            import torch
            if len(images) > int(os.environ["OOM_ABOVE"]):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return step(self, images, *args)
        module.Trainer.step = patched

    def driver(module):
        module.driver_version = lambda: os.environ["FAKE_DRIVER"]

    patch_on_import({"core.engine.trainer": out_of_memory if os.environ.get("OOM_ABOVE") else None,
                     "core.nn.gpu": driver if os.environ.get("FAKE_DRIVER") else None})
'''


@pytest.fixture
def patched(tmp_path, monkeypatch):
    """Every process the test starts runs with PATCHES: patched(OOM_ABOVE=..., FAKE_DRIVER=...)."""
    sitecustomize(tmp_path / "patches", monkeypatch, PATCHES)

    def set_up(**env) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
    return set_up


def test_out_of_memory_at_the_first_step_says_what_fits_and_the_run_resumes_with_that_batch(tmp_path, patched):
    patched(OOM_ABOVE=128)
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    cfg["train"] |= {"batch_size": 256, "precision": "fp32"}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "big")
    out = core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--device", "cpu", check=False)
    assert out.returncode == 1
    error = run.status()["error"]
    assert run.status()["state"] == "failed"
    assert error.startswith("out of memory at batch 256 (") and "GiB used" in error and "GiB free of" in error
    assert f"--resume {run.dir} --batch-size 128" in error, error
    assert not (run.checkpoints / "last.json").exists()  # nothing trained: the resume starts it over

    out = core_cli("train", "--resume", str(run.dir), "--batch-size", "128", "--device", "cpu", check=False)
    assert out.returncode == 0, run.log_tail()
    assert run.status()["state"] == "finished" and run.config().train.batch_size == 128
    assert json.loads(run.results_path.read_text())["accuracy"] > 0


def test_a_resume_with_another_batch_takes_it_from_the_saved_epoch_on(tmp_path):
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    cfg["train"] |= {"batch_size": 64, "precision": "fp32", "epochs": 2}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "mid")
    core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--device", "cpu", "--epochs", "1")
    core_cli("train", "--resume", str(run.dir), "--epochs", "2", "--batch-size", "32", "--device", "cpu")
    log = run.log_path.read_text()
    assert "resumed at epoch 1 step 0" in log and "batch 64 -> 32: continuing at epoch 1 step 0" in log
    assert run.status()["state"] == "finished" and run.config().train.batch_size == 32
    steps = [m["step"] for m in run.metrics() if m["kind"] == "epoch"]
    assert steps == [5000 // 64, 2 * (5000 // 32)]  # the second epoch in steps of 32


# ---- which GPU torch can train on: mocked CUDA and mps ---------------------------------------------------

def fake_gpu(monkeypatch, capability, name="Tesla V100-SXM2-16GB", count=1):
    """torch.cuda as a machine with `count` GPUs of `capability` shows it, with this wheel's real arch list."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


FIX = f"pip install torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cu126"


@pytest.mark.parametrize("capability, name", [((6, 0), "Tesla P100-PCIE-16GB"), ((7, 0), "Tesla V100-SXM2-16GB")])
def test_a_gpu_the_wheel_has_no_kernels_for_is_one_line_naming_the_older_cuda_build(monkeypatch, capability, name):
    fake_gpu(monkeypatch, capability, name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    problem, sm = gpu.arch_problem(0), f"sm_{capability[0]}{capability[1]}"
    assert problem == (f"GPU 0 ({name}, {sm}) has no kernels in torch {torch.__version__}, built for sm_75 sm_80 "
                       f"sm_86 sm_90 sm_100 sm_120: install the CUDA 12.6 build, which keeps {sm}: {FIX}")
    with pytest.raises(StudioError) as raised:
        pick_device("cuda")
    assert str(raised.value) == problem
    assert auto_device() == ("cpu", problem)  # auto: the CPU, saying why
    assert pick_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (12, 0)])
def test_the_gpus_the_wheel_has_kernels_for_train_on_cuda(monkeypatch, capability):
    fake_gpu(monkeypatch, capability, count=2)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    assert gpu.arch_problem(0) is None and auto_device() == ("cuda", None)
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_kernels_are_matched_by_major_version_and_ptx():
    assert gpu.has_kernels((8, 9), ["sm_80", "sm_86"])       # an sm_86 cubin runs on sm_89
    assert not gpu.has_kernels((8, 0), ["sm_86", "sm_90"])   # not an sm_86 one on sm_80
    assert gpu.has_kernels((12, 1), ["sm_90", "compute_90"])  # PTX is compiled by the driver for newer GPUs
    assert not gpu.has_kernels((3, 7), ["sm_50", "sm_60"])


def test_a_driver_that_cannot_run_the_wheel_is_one_line_and_auto_trains_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "driver_version", lambda: "470.57.02")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def too_old():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nPlease update")
    monkeypatch.setattr(torch.cuda, "init", too_old)
    problem = gpu.driver_problem()
    assert problem == (f"the NVIDIA driver 470.57.02 cannot run torch {torch.__version__} (built for CUDA "
                       f"{torch.version.cuda}): The NVIDIA driver on your system is too old (found version 11040).; "
                       f"update the driver, or install the CUDA 12.6 build: {FIX}")
    assert auto_device() == ("cpu", problem)
    with pytest.raises(StudioError, match="too old"):
        pick_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose: nothing to say
    assert gpu.driver_problem() is None
    monkeypatch.setattr(gpu, "driver_version", lambda: None)  # no NVIDIA driver: a CPU machine, nothing to say
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.driver_problem() is None and auto_device() == ("cpu", None)


def test_auto_on_a_machine_whose_driver_cannot_run_torch_trains_on_the_cpu_and_says_why(tmp_path, patched):
    patched(FAKE_DRIVER="470.57.02")
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    path = tmp_path / "auto.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "auto")
    core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--device", "auto")
    status = run.status()
    assert status["state"] == "finished" and status["device"] == "cpu"
    note = status["device_note"]
    assert note.startswith("the NVIDIA driver 470.57.02 cannot run torch") and FIX in note
    assert note.endswith("Training on the CPU instead.") and note in run.log_path.read_text()
    out = core_cli("train", "--resume", str(run.dir), "--device", "cuda", check=False)  # asked for by name: fails
    assert out.returncode != 0 and out.stderr.startswith("error: the NVIDIA driver 470.57.02 cannot run torch")


def test_apple_silicon_trains_on_mps_alone_nchw_in_fp16_with_a_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "driver_version", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pick_device("auto") == torch.device("mps") and auto_device() == ("mps", None)
    assert DeviceRequest.parse("auto") == DeviceRequest("mps") and DeviceRequest("mps").candidates() == ["mps"]
    with pytest.raises(StudioError, match="one process"):
        plan("mps", None, 2)
    assert plan("mps")[1].world_size == 1
    assert amp_policy("mps", None, "auto")[:2] == (torch.float16, True)
    assert device_name(torch.device("mps")) == "Apple GPU (mps)"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(StudioError, match="Apple silicon"):
        pick_device("mps")


# ---- the queue: GPUs locked by UUID -------------------------------------------------------------------------

def test_gpu_locks_are_keyed_by_uuid_so_slurm_jobs_that_each_see_gpu_0_do_not_wait_for_each_other(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # every Slurm job on the node sees its GPU as 0
    waits = []
    request = DeviceRequest.parse("cuda")
    monkeypatch.setattr(queue, "gpu_uuids", lambda: {"0": "GPU-aaaa"})
    with queue.hold(request, "job-1", lambda: True, waits.append) as first:
        monkeypatch.setattr(queue, "gpu_uuids", lambda: {"0": "GPU-bbbb"})  # another job's GPU 0
        with queue.hold(request, "job-2", lambda: True, waits.append) as second:
            assert first == second == ["0"] and waits == []
            assert {r["device"]: r["held_by"] for r in queue.queue_state()} == {
                "cpu": None, "gpu-GPU-aaaa": "job-1", "gpu-GPU-bbbb": "job-2"}
        monkeypatch.setattr(queue, "gpu_uuids", lambda: {"0": "GPU-aaaa"})  # the same GPU: it waits
        with pytest.raises(queue.StopWaiting), queue.hold(request, "job-3", lambda: bool(waits), waits.append):
            pass
        assert waits == ["gpu0 is busy with job-1"]


def test_gpu_uuids_come_from_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: type("Properties", (), {"uuid": f"uuid-{index}"})())
    assert queue.gpu_uuids() == {"2": "uuid-0", "3": "uuid-1"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no CUDA: the IDs name the locks
    assert queue.gpu_uuids() == {}


@pytest.mark.parametrize("capability, convolutions", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_tf32_is_recorded_as_cudnn_uses_it(monkeypatch, capability, convolutions):
    fake_gpu(monkeypatch, capability)
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32  # torch's defaults
    assert tf32_in_use(torch.device("cuda", 0)) == {"convolutions": convolutions, "matmul": False}
    assert tf32_in_use(torch.device("cpu")) is None


def test_a_probe_lists_only_the_gpus_this_torch_can_train_on_and_says_why_not_the_others(monkeypatch):
    fake_gpu(monkeypatch, (7, 0), count=1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80"])
    devices, problems = find_devices()
    assert devices == {"cpu": "CPU"} and len(problems) == 1 and FIX in problems[0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert find_devices() == ({"cuda:0": "Tesla T4", "cpu": "CPU"}, [])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "driver_version", lambda: None)
    assert find_devices() == ({"mps": "Apple GPU", "cpu": "CPU"}, [])
    assert device_label("mps", {"mps": "Apple GPU", "cpu": "CPU"}) == "Apple GPU (mps)"
