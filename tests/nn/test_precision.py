"""Which arithmetic a run trains in (core.nn.infer.amp_policy) on the GPUs students have, with torch.cuda and the
CPU's ISA mocked, and the fp16 path with its GradScaler trained for real on the CPU: skipped steps on inf
gradients, unscale before clipping, the scale saved and restored, a run that stops, resumes (with another batch)
and finishes."""
import json

import pytest
import torch

from core.design.config import PRECISIONS, RunConfig
from core.engine.trainer import Trainer
from core.nn.checkpoint import load_train_state
from core.nn import infer
from core.nn.infer import amp_policy, policy_for
from core.runs.run import Run, change_batch_size, launch, stop
from tests.helpers import QUICK_ARCH, SMALL, core_cli, wait_for

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize("capability, dtype, scaler", [
    ((6, 0), None, False),   # P100: no tensor cores
    ((7, 0), FP16, True),    # V100
    ((7, 5), FP16, True),    # T4, RTX 8000
    ((8, 0), BF16, False),   # A100
    ((9, 0), BF16, False),   # H100
])
def test_auto_on_each_cuda_generation(capability, dtype, scaler):
    policy = amp_policy("cuda", capability, "auto")
    assert (policy.dtype, policy.scaler) == (dtype, scaler)
    assert f"sm_{capability[0]}{capability[1]}" in policy.why


def test_auto_on_apple_silicon_is_fp16_with_a_scaler():
    assert amp_policy("mps", None, "auto")[:2] == (FP16, True)


@pytest.mark.parametrize("amx, avx512_bf16, capped, dtype", [
    (True, True, False, BF16),     # Sapphire Rapids and later
    (False, True, False, BF16),    # Cooper Lake, Zen 4
    (False, False, False, None),   # AVX-512 without bf16, AVX2: bf16 would be emulated
    (True, True, True, None),      # ONEDNN_MAX_CPU_ISA=AVX2: an AVX2 CPU's kernels
])
def test_auto_on_the_cpu_reads_its_bf16_from_the_host(monkeypatch, amx, avx512_bf16, capped, dtype):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(infer, "bf16_capped_off", lambda: capped)
    policy = amp_policy("cpu", None, "auto")
    assert (policy.dtype, policy.scaler) == (dtype, False)
    assert ("capped" in policy.why) == (capped and dtype is None)


@pytest.mark.parametrize("kind, capability", [("cuda", (6, 0)), ("cuda", (7, 5)), ("cuda", (9, 0)), ("mps", None),
                                              ("cpu", None)])
def test_a_setting_other_than_auto_is_what_runs_everywhere(kind, capability):
    assert amp_policy(kind, capability, "fp32")[:2] == (None, False)
    assert amp_policy(kind, capability, "fp16")[:2] == (FP16, True)
    assert amp_policy(kind, capability, "bf16")[:2] == (BF16, False)
    assert ("slow kernels" in amp_policy(kind, capability, "bf16").why) == (kind == "cuda" and capability < (8, 0))
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}


def test_a_cuda_device_is_judged_by_its_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert policy_for(torch.device("cuda", 1), "auto").name == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert policy_for(torch.device("cuda", 1), "auto").name == "bf16"


def fp16_trainer(**train) -> Trainer:
    cfg = RunConfig.from_dict({"arch": QUICK_ARCH, "train": {"precision": "fp16", "lr": 0.05, **train}})
    return Trainer(cfg, torch.device("cpu"))


def batch(n: int = 32):
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
            torch.randint(0, 10, (n,), generator=generator))


def test_an_inf_gradient_skips_the_step_and_halves_the_scale_and_the_scale_is_saved_and_restored():
    trainer = fp16_trainer()
    images, labels = batch()
    trainer.step(images, labels, 0.05)
    assert trainer.scaler.get_scale() == 65536.0 and int(trainer.skipped) == 0
    before = [p.detach().clone() for p in trainer.model.parameters()]
    weight = next(trainer.model.parameters())
    hook = weight.register_hook(lambda grad: grad * float("inf"))
    loss, _ = trainer.step(images, labels, 0.05)
    hook.remove()
    assert torch.isfinite(loss)  # the forward was fine: only the update is skipped
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert trainer.scaler.get_scale() == 32768.0 and int(trainer.skipped) == 1
    trainer.step(images, labels, 0.05)  # the next step updates again
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))

    tensors, plain = trainer.state()
    resumed = fp16_trainer()
    resumed.load_state(tensors, plain)
    assert resumed.scaler.get_scale() == 32768.0


def test_gradients_are_unscaled_before_they_are_clipped():
    trainer = fp16_trainer(grad_clip=1e-3)  # far below the true gradient norm
    images, labels = batch()
    trainer.step(images, labels, 0.05)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trainer.model.parameters()]))
    # clipped in true units; clipping the scaled gradients would leave 1e-3 / 65536 once unscaled
    assert norm.item() == pytest.approx(1e-3, rel=0.05)


def test_a_real_fp16_run_with_its_scaler_trains_stops_resumes_and_finishes(tmp_path):
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    cfg["train"] |= {"precision": "fp16", "time_limit": 8, "batch_size": 64, "log_every": 5}  # fp16 is slow on a CPU
    path = tmp_path / "fp16.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "fp16")
    core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--create-only")
    launch(run, "cpu")
    try:
        wait_for(lambda: any(m["kind"] == "step" for m in run.metrics()), timeout=120, what="the first steps")
        stop(run)
        status = wait_for(lambda: run.status()["state"] not in ("queued", "running") and run.status(),
                          timeout=120, what="stopped")
    finally:
        stop(run)
    assert status["state"] == "stopped", run.log_tail()
    _, plain, saved = load_train_state(run.checkpoints, "last")
    assert 0 < saved["step"] < 5000 // 64 and saved["batch_size"] == 64
    assert plain["scaler.scale"] > 0  # the GradScaler's state is in the checkpoint
    record = json.loads(run.record_path.read_text())
    assert record["torch"]["precision"] == {"setting": "fp16", "autocast": "fp16", "grad_scaler": True,
                                            "why": "fp16 as the config asks, with a GradScaler against underflow"}

    change_batch_size(run, 32)  # mid-epoch: the images already trained stay trained
    launch(run, "cpu")
    wait_for(lambda: run.status()["state"] in ("finished", "failed"), timeout=300, what="the resumed run")
    assert run.status()["state"] == "finished", run.log_tail()
    log = run.log_path.read_text()
    assert "precision: fp16 with a GradScaler" in log and f"resumed at epoch 0 step {saved['step']}" in log
    assert f"batch 64 -> 32: continuing at epoch 0 step {2 * saved['step']} of {5000 // 32}" in log
    assert "fp16 loss scale" in log
    assert json.loads(run.results_path.read_text())["accuracy"] > 0.1
