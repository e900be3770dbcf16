"""The CUDA path on a real GPU: a run launched the way the app launches it (detached process, status,
metrics, safetensors checkpoints, Stop, Resume), every optimizer path with and without torch.compile in
fp32, bf16 and fp16 with its GradScaler, evaluate and predict, the bench, and the Train page's GPU list. What
"auto" picks follows the GPU (core.nn.infer.amp_policy: bf16 from sm_80 on, fp16 on sm 7.x).

Marked `gpu`, and skipped where torch sees no CUDA device: `pytest -m gpu` runs just these on a GPU
machine (see docs/PERFORMANCE.md for the one call that does it). Data: the built-in slice. Everything that is
not a kernel (which arithmetic and device are chosen, the arch list and driver checks, locks, OOM, mps) is tested
without a GPU, with torch.cuda mocked: tests/nn/test_devices.py and tests/nn/test_precision.py.
"""
import json

import pytest
import torch

from core.data.augment import Normalizer
from core.data.datasets import load_dataset
from core.deploy.predict import Classifier, classify, sample_files
from core.design.config import RunConfig
from core.engine.trainer import Trainer
from core.nn.checkpoint import load_checkpoint, load_model
from core.nn.infer import evaluate, policy_for
from core.runs.run import Run, launch, stop
from tests.helpers import SMALL, core_cli, wait_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


def auto_policy():
    """What "auto" trains in on this GPU."""
    return policy_for(torch.device("cuda", 0), "auto")


def write_config(tmp_path, name, **train):
    cfg = json.loads(json.dumps(SMALL))
    cfg["train"].update(train)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def cpu_accuracy(run: Run, tag: str) -> float:
    """The accuracy of a checkpoint re-measured on the CPU in fp32, on the slice's test split."""
    model, meta = load_model(run.checkpoints, tag, "cpu")
    test = load_dataset("builtin").test
    return evaluate(model, test.images, test.labels, Normalizer(meta["mean"], meta["std"]), torch.device("cpu"),
                    10, meta["tta_flip"], "fp32").accuracy


def test_a_detached_cuda_run_reports_saves_stops_on_sigterm_and_resumes(tmp_path):
    path = write_config(tmp_path, "gpu", epochs=500)  # far more than it will train before the stop
    out = core_cli("train", "--config", str(path), "--run-dir", str(tmp_path / "runs" / "gpu"), "--detach",
                   "--device", "cuda")
    run = Run(tmp_path / "runs" / "gpu")
    assert json.loads(out.stdout)["pid"] > 0
    try:
        wait_for(lambda: any(m["kind"] == "epoch" for m in run.metrics()), timeout=300, what="the first epoch")
        status = run.status()
        assert status["state"] == "running" and status["device"] == "cuda:0"
        assert status["device_name"] == torch.cuda.get_device_name(0)
        assert any(m["kind"] == "step" for m in run.metrics())
        stop(run)  # SIGTERM: finish the step, save `last`, say stopped
        status = wait_for(lambda: run.status()["state"] not in ("queued", "running") and run.status(),
                          what="stopped")
        assert status["state"] == "stopped", status
    finally:
        stop(run)
    saved = load_checkpoint(run.checkpoints, "last")  # safetensors, no pickle
    assert saved.meta["epoch"] >= 1 and all(t.device.type == "cpu" for t in saved.weights.values())
    assert (run.checkpoints / "last.state.safetensors").stat().st_size > 0

    total = saved.meta["epoch"] + 2
    launch(run, "cuda", epochs=total)
    wait_for(lambda: run.status()["state"] in ("finished", "failed"), timeout=300, what="the resumed run")
    assert run.status()["state"] == "finished", run.log_tail()
    log = run.log_path.read_text()
    assert f"precision: {auto_policy().name}" in log
    assert "training on cuda:0" in log and f"resumed at epoch {saved.meta['epoch']} step {saved.meta['step']}" in log
    epochs = [m["epoch"] for m in run.metrics() if m["kind"] == "epoch"]
    assert epochs[-1] == total and epochs[-2:] == [total - 1, total]
    results = json.loads(run.results_path.read_text())
    assert results["accuracy"] > 0.2  # chance is 0.1
    # what the run measured on the GPU (bf16 or fp16) is what its weights give on the CPU (fp32), to rounding
    assert cpu_accuracy(run, "last") == pytest.approx(results["accuracy"], abs=0.015)


# Every optimizer path of build_optimizer that is fused on CUDA (and Lookahead around one), EMA, the batched
# and the per-image augmentations: each in a real training process, with compile on and off, bf16, fp16 and fp32.
VARIANTS = {
    "sgd-nesterov fp32": {"precision": "fp32", "nesterov": True},
    "sgd+ema+clip fp16 scaler": {"precision": "fp16", "ema_decay": 0.99, "grad_clip": 1.0},
    "adamw+lookahead fp16 scaler compiled": {"precision": "fp16", "optimizer": "adamw", "lr": 0.003,
                                             "lookahead": True, "compile": True},
    "adamw+lookahead+ema bf16": {"precision": "bf16", "optimizer": "adamw", "lr": 0.003, "lookahead": True,
                                 "ema_decay": 0.99},
    "sgd+ema+cutout bf16 compiled": {"precision": "bf16", "compile": True, "ema_decay": 0.99,
                                     "label_smoothing": 0.1, "augment": ["crop", "flip", "cutout"]},
    "adam+lookahead fp32 compiled": {"precision": "fp32", "compile": True, "optimizer": "adam", "lr": 0.003,
                                     "lookahead": True, "grad_clip": 1.0},
    "per-image augmentations auto": {"augment": ["crop", "flip", "perspective", "autoaugment", "trivialaugment"],
                                     "tta_flip": True},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_on_cuda(tmp_path, name):
    path = write_config(tmp_path, "variant", epochs=3, **VARIANTS[name])
    run_dir = tmp_path / "runs" / "variant"
    out = core_cli("train", "--config", str(path), "--run-dir", str(run_dir), "--device", "cuda", check=False)
    run = Run(run_dir)
    assert out.returncode == 0, run.log_tail()
    assert run.status()["device"] == "cuda:0"
    results = json.loads(run.results_path.read_text())
    assert results["accuracy"] > 0.2, run.log_tail()
    assert cpu_accuracy(run, "last") == pytest.approx(results["accuracy"], abs=0.015)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("lookahead", [False, True])
def test_cuda_optimizers_are_fused_and_step(optimizer, lookahead):
    # fp32: a step fp16's scaler skips would move Lookahead's sync off the fifth step
    cfg = RunConfig.from_dict(SMALL).replace_train(optimizer=optimizer, lookahead=lookahead, lr=0.01, precision="fp32")
    trainer = Trainer(cfg, torch.device("cuda"))
    inner = trainer.optimizer.optimizer if lookahead else trainer.optimizer
    assert inner.defaults["fused"] is True
    before = [p.detach().clone() for p in trainer.model.parameters()]
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (64,), device="cuda")
    for _ in range(5):  # the fifth step is Lookahead's sync of slow and fast weights
        loss, _ = trainer.step(images, labels, 0.01)
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    if lookahead:
        assert all(torch.equal(s, p) for s, p in zip(trainer.optimizer.slow, trainer.model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_cpu_state_resumed_on_cuda_steps_fused_and_a_step_never_syncs(optimizer):
    """Resume rebuilds the optimizer for the device and loads only the state: a run stopped on a CPU steps fused
    on the GPU. A step with Lookahead, EMA on the (t/T)^3 ramp and BatchNorm bias groups waits for nothing."""
    cfg = RunConfig.from_dict(SMALL).replace_train(optimizer=optimizer, lr=0.01, lookahead=True, ema_decay=0.99,
                                                   averaging_ramp=True, bn_bias_lr_scale=8, freeze_bn_scale=True)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    on_cpu = Trainer(cfg, torch.device("cpu"))
    on_cpu.step(images, labels, 0.01, 0.5)
    on_gpu = Trainer(cfg, torch.device("cuda"))
    on_gpu.load_state(*on_cpu.state())
    assert all(g["fused"] is True for g in on_gpu.optimizer.param_groups)
    images, labels = images.cuda(), labels.cuda()
    on_gpu.step(images, labels, 0.01, 0.5)  # the first step allocates and tunes
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(5):  # Lookahead syncs its slow weights on one of these
            on_gpu.step(images, labels, 0.01, 0.6 + i / 20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu.ema.updates == 7


def test_evaluate_and_predict_on_cuda_agree_with_the_cpu(trained, tmp_path):
    args = ["--run", str(trained.dir), "--data", "builtin", "--mistakes", "0"]
    on_gpu = json.loads(core_cli("evaluate", *args, "--device", "cuda").stdout)
    on_cpu = json.loads(core_cli("evaluate", *args, "--device", "cpu").stdout)
    assert on_gpu["images"] == 1000 and on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=0.015)

    files = []
    for name, png in sample_files():
        (tmp_path / name).write_bytes(png)
        files.append(str(tmp_path / name))
    gpu_top = [p["top"][0]["class"] for p in json.loads(core_cli("predict", "--run", str(trained.dir), "--device",
                                                                   "cuda", "--tta-flip", *files).stdout)]
    cpu_top = [p["top"][0]["class"] for p in json.loads(core_cli("predict", "--run", str(trained.dir), "--device",
                                                                   "cpu", "--tta-flip", *files).stdout)]
    assert sum(g == c for g, c in zip(gpu_top, cpu_top)) >= len(files) - 1  # bf16 may flip a near tie

    classifier = Classifier.load(trained, "best", "cuda")
    (pred,) = classify(classifier, sample_files()[:1], grad_cam=True)
    assert pred.ok and pred.cam.shape == (32, 32) and pred.cam.min() >= 0 and pred.cam.max() <= 1 + 1e-6


@pytest.mark.parametrize("compile_flag", [[], ["--compile"]])
def test_bench_on_cuda_reports_the_share_of_the_measured_peak(compile_flag):
    out = core_cli("bench", "--preset", "resnet20", "--device", "cuda", "--seconds", "3", "--data", "builtin",
                   *compile_flag)
    report = json.loads(out.stdout)
    policy = auto_policy()
    assert report["device"] == "cuda:0" and report["peak"]["tflops"] > 1
    assert report["peak"]["dtype"] == str(policy.dtype or torch.float32).removeprefix("torch.")
    engine = report["engine"]
    assert engine["precision"] == policy.name and engine["compile"] == bool(compile_flag)
    assert 0 < engine["fraction_of_peak"] < 1 and report["ratio"] > 0
    assert engine["train_tflops"] == pytest.approx(engine["images_per_s"] * report["train_flops_per_image"] / 1e12)


def test_the_train_page_lists_the_gpu_the_probe_found_and_launches_on_it(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from tests.pages.test_app_train import TINY, assert_clean, button, open_page, wait_for_state

    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
    machine = json.loads(core_cli("machine").stdout)  # the probe the page starts: finds the GPU and times it
    assert machine["devices"]["cuda:0"] == torch.cuda.get_device_name(0)
    assert machine["speeds"]["cuda:0"]["images_per_s"] > 0
    app = open_page("train", TINY)
    assert_clean(app)
    device = app.get_by_key("train_device")
    assert device.value == "cuda" and device.options[0] == "GPUs" and device.options[-1] == "CPU"  # GPUs first
    assert app.get_by_key("train_gpus").value == ["cuda:0"]
    assert app.get_by_key("train_gpus").options[0] == f"GPU 0 · {torch.cuda.get_device_name(0)}"
    app.get_by_key("train:epochs").set_value(1).run()
    app.get_by_key("train_data").set_value("builtin").run()
    next(box for box in app.text_input if box.label == "Run name").input("on-gpu").run()
    button(app, "Launch").click().run()
    assert_clean(app)
    run = Run(tmp_path / "runs" / "on-gpu")
    try:
        assert wait_for_state(run, ("finished", "failed"))["state"] == "finished", run.log_tail()
        assert run.status()["device"] == "cuda:0"
    finally:
        stop(run)
