"""The training engine on the CPU, through real processes and the run folders they write."""
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from core.data.augment import Normalizer, alternating_flip, cutout, random_crop, random_flip
from core.data.datasets import load_dataset
from core.design.config import RunConfig, TrainConfig
from core.design.presets import preset_for_cpu
from core.design.spec import SpecError
from core.engine.loop import next_evaluation
from core.engine.optim import Lookahead, WeightEMA, load_optimizer_state, lr_at
from core.engine.trainer import Trainer
from core.nn.checkpoint import CheckpointError, load_checkpoint, load_model, load_train_state
from core.nn.infer import amp_policy, cpu_has_bf16, evaluate, views
from core.runs.queue import queue
from core.runs.run import Run, RunError, create_run, launch, stop
from tests.helpers import QUICK_ARCH, SMALL, core_cli, core_main, wait_for

QUICK = SMALL | {"arch": QUICK_ARCH}


def new_run(runs: Path, name: str, **train) -> Run:
    """A run of QUICK launched with `python -m core train --detach`, as the app launches one."""
    cfg = json.loads(json.dumps(QUICK))
    cfg["train"].update(train)
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{name}.json"
    path.write_text(json.dumps(cfg))
    out = core_cli("train", "--config", str(path), "--run-dir", str(runs / name), "--detach", "--device", "cpu")
    assert json.loads(out.stdout)["pid"] > 0
    return Run(runs / name)


def ended(run: Run) -> dict | None:
    status = run.status()
    return status if status["state"] not in ("queued", "running") else None


def test_a_preset_run_records_its_preset_its_exact_count_and_the_options_given(tmp_path):
    run_dir = tmp_path / "runs" / "r20"
    out = core_cli("train", "--preset", "resnet20", "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "64",
                   "--data", "builtin", "--device", "cpu", "--create-only")
    assert json.loads(out.stdout) == {"run": str(run_dir), "state": "queued"}
    config = json.loads(Run(run_dir).config_path.read_text())
    assert config["params"] == 272_474 and config["preset"] == "resnet20" and config["data"] == "builtin"
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 64
    assert Run(run_dir).status()["state"] == "queued" and not Run(run_dir).metrics_path.exists()


def test_a_time_limit_from_the_command_line_replaces_the_presets_and_a_resume_refuses_a_new_one(tmp_path):
    """Issue 29's check trains `--preset laptop` (a 30-minute recipe) for 10 minutes: `--time-limit 600`."""
    ten, epochs = tmp_path / "runs" / "ten", tmp_path / "runs" / "epochs"
    core_cli("train", "--preset", "laptop", "--run-dir", str(ten), "--time-limit", "600", "--data", "builtin",
             "--create-only")
    core_cli("train", "--preset", "laptop", "--run-dir", str(epochs), "--time-limit", "0", "--epochs", "3",
             "--data", "builtin", "--create-only")
    assert RunConfig.from_preset("laptop").train.time_limit == 1800
    assert json.loads(Run(ten).config_path.read_text())["train"]["time_limit"] == 600
    assert {k: json.loads(Run(epochs).config_path.read_text())["train"][k] for k in ("time_limit", "epochs")} == {
        "time_limit": 0, "epochs": 3}
    alone = tmp_path / "runs" / "alone"  # --epochs alone means epochs, not a warm-up reshaped inside 30 minutes
    said = core_cli("train", "--preset", "laptop", "--run-dir", str(alone), "--epochs", "3", "--data", "builtin",
                    "--create-only").stderr
    assert {k: json.loads(Run(alone).config_path.read_text())["train"][k] for k in ("time_limit", "epochs")} == {
        "time_limit": 0, "epochs": 3}
    assert "note: --epochs 3 trains for 3 epochs, not for the recipe's time limit (1800 s)" in said
    refused = core_cli("train", "--resume", str(ten), "--time-limit", "60", check=False)
    assert refused.returncode != 0 and "a resumed run keeps its time limit" in refused.stderr
    assert Run(ten).status()["state"] == "queued"  # untouched


def test_laptop_on_a_cpu_that_trains_in_fp32_trains_its_narrow_variant_unless_asked_not_to(tmp_path, monkeypatch):
    """An AVX2 CPU's kernels (the ISA caps, as on most laptops) train in fp32: `--preset laptop` takes
    laptop-narrow and says so; --as-named keeps laptop; a GPU's device keeps it too."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    fit, named = tmp_path / "runs" / "fit", tmp_path / "runs" / "named"
    said = core_cli("train", "--preset", "laptop", "--run-dir", str(fit), "--device", "cpu", "--data", "builtin",
                    "--create-only").stderr
    core_cli("train", "--preset", "laptop", "--as-named", "--run-dir", str(named), "--device", "cpu", "--data",
             "builtin", "--create-only")
    # the reason names what keeps this host in fp32: the cap on a CPU with bf16 (a Xeon with AMX), else the CPU
    why = "oneDNN is capped below its bf16 ISAs" if cpu_has_bf16() else \
        "this CPU has no native bf16 (no AVX512-BF16/AMX)"
    assert f"note: training laptop-narrow, not laptop: this run trains on the CPU in fp32, since {why}" in said
    assert "--as-named trains laptop itself" in said
    config = {run.name: json.loads(Run(run).config_path.read_text()) for run in (fit, named)}
    assert (config["fit"]["preset"], config["fit"]["params"]) == ("laptop-narrow", 523_018)
    assert (config["named"]["preset"], config["named"]["params"]) == ("laptop", 2_063_050)
    assert config["fit"]["train"] == config["named"]["train"]
    gpu = core_cli("train", "--preset", "laptop", "--device", "cuda", "--run-dir", str(tmp_path / "gpu"),
                   "--data", "builtin", "--create-only", check=False)  # no GPU here: refused, but not switched
    assert "laptop-narrow" not in gpu.stderr

@pytest.mark.kernels
def test_a_trained_run_has_every_file_and_its_checkpoint_predicts_what_training_measured(trained):
    """The session's `trained` run: two epochs of SMALL by `python -m core train` in a process of its own (the
    fixture checks that the command said `finished`)."""
    status = trained.status()
    assert status["state"] == "finished" and status["device"] == "cpu" and status["epoch"] == 2
    epochs = [m for m in trained.metrics() if m["kind"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [1, 2] and {m["eval_split"] for m in epochs} == {"test"}
    assert {"train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "images_per_s", "elapsed"} <= set(epochs[0])
    for tag in ("best", "last"):
        for suffix in (".safetensors", ".json", ".state.safetensors"):
            assert (trained.checkpoints / f"{tag}{suffix}").stat().st_size > 0
    assert "epoch 2/2" in trained.log_path.read_text()

    results = json.loads(trained.results_path.read_text())
    assert sum(map(sum, results["confusion"])) == 1000
    assert set(results["per_class_accuracy"]) == set(load_dataset("builtin").classes)

    # the checkpoint loads without the training code's objects and predicts what training measured
    model, meta = load_model(trained.checkpoints, "last")
    test = load_dataset("builtin").test
    result = evaluate(model, test.images, test.labels, Normalizer(meta["mean"], meta["std"]), torch.device("cpu"), 10)
    assert result.accuracy == pytest.approx(results["accuracy"], abs=0.002)
    assert result.accuracy > 0.15  # two epochs on 5,000 images beat chance (0.10) by far: it learns


def test_a_detached_run_queues_dies_resumes_stops_and_resumes_to_its_end(tmp_path):
    """The life of runs launched as the app launches them, each in processes of its own, on one CPU: a second
    run (of another runs folder) waits for the first; kill -9 of the first after an epoch reads as failed within
    seconds and hands the CPU on; resumed, the first continues from its checkpoint, stops on request saving where
    it is, and resumed again with a new last epoch (--epochs) trains to it without training any epoch twice."""
    first = new_run(tmp_path / "a", "first", epochs=50)  # more than it trains before it is killed
    wait_for(lambda: first.status()["state"] == "running", what="first running")
    second = new_run(tmp_path / "b", "second", epochs=1)
    status = wait_for(lambda: second.status().get("waiting_for") and second.status(), what="second queued")
    assert status["state"] == "queued" and str(first.dir) in status["waiting_for"]
    seen = queue(second.dir.parent)  # what `python -m core queue` and the Train page show
    assert {"device": "cpu", "held_by": str(first.dir)} in seen["devices"]
    assert seen["waiting"] == [{"run": "second", "waiting_for": status["waiting_for"]}]

    # kill -9 just after an epoch's checkpoint (the status says its epoch after saving): the next epoch line is
    # a whole epoch away, so nothing is written twice on resuming
    done = first.status().get("epoch", 0)
    wait_for(lambda: first.status().get("epoch", 0) > done, what="an epoch saved")
    killed_at = time.time()
    os.kill(first.status()["pid"], signal.SIGKILL)
    status = wait_for(lambda: first.status()["state"] == "failed" and first.status(), timeout=5, what="failed")
    assert "without saying why" in status["error"] and "resume" in status["error"]
    # its watcher saw the exit code: what the out-of-memory killer sends, and what to do then
    status = wait_for(lambda: "SIGKILL" in first.status()["error"] and first.status(), timeout=5, what="SIGKILL")
    assert "memory ran out" in status["error"] and "smaller batch" in status["error"]
    steps = [m for m in first.metrics() if m["kind"] == "step"]
    assert steps[0]["step"] == 10 and 0 < steps[0]["epoch"] < 1  # charts move within an epoch
    assert wait_for(lambda: ended(second), what="second to end")["state"] == "finished"
    assert second.status()["started"] >= killed_at  # it waited for the CPU until the first run was gone

    saved = json.loads((first.checkpoints / "last.json").read_text())
    assert saved["epoch"] >= 1 and saved["step"] == 0
    launch(first, "cpu")
    wait_for(lambda: f"resumed at epoch {saved['epoch']} step 0" in first.log_path.read_text(), what="resumed")
    stop(first)
    assert wait_for(lambda: ended(first), what="stopped")["state"] == "stopped", first.log_tail()
    saved = json.loads((first.checkpoints / "last.json").read_text())
    assert saved["epoch"] >= 1 and saved["step"] > 0  # it saved where it stopped, within the epoch

    launch(first, "cpu", epochs=saved["epoch"] + 1)  # to the end of the epoch it stopped in
    assert wait_for(lambda: ended(first), what="the resumed run to end")["state"] == "finished", first.log_tail()
    epochs = [m["epoch"] for m in first.metrics() if m["kind"] == "epoch"]
    assert epochs == list(range(1, saved["epoch"] + 2)), epochs  # none twice, none lost
    assert f"resumed at epoch {saved['epoch']} step {saved['step']}" in first.log_path.read_text()


def test_over_budget_designs_are_refused_with_the_count(tmp_path):
    out = core_cli("train", "--preset", "resnet18", "--run-dir", str(tmp_path / "runs" / "big"), check=False)
    assert out.returncode == 2 and "11,173,962 parameters" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "big").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "/etc"])
def test_run_names_cannot_leave_the_runs_folder(name):
    with pytest.raises(RunError):
        Run.named(name)


def test_damaged_checkpoints_give_a_clear_error(trained, tmp_path):
    ckpt = Path(shutil.copytree(trained.checkpoints, tmp_path / "checkpoints"))
    weights = (ckpt / "best.safetensors").read_bytes()
    (ckpt / "best.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(ckpt, "best")
    (ckpt / "best.safetensors").write_bytes((ckpt / "last.safetensors").read_bytes())  # another save's weights
    meta = json.loads((ckpt / "best.json").read_text())
    meta["generation"] = "0" * 16
    (ckpt / "best.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(ckpt, "best")


def test_learning_rate_schedules():
    t = TrainConfig(lr=0.1, schedule="cosine", warmup_epochs=1)
    assert lr_at(t, 0, 1000, 100) == pytest.approx(0.01)
    assert lr_at(t, 100, 1000, 100) == pytest.approx(0.1)
    assert lr_at(t, 999, 1000, 100) < 1e-4
    one = TrainConfig(lr=0.2, schedule="onecycle")
    peak = max(lr_at(one, s, 1000, 100) for s in range(1000))
    assert peak == pytest.approx(0.2, rel=1e-3) and lr_at(one, 0, 1000, 100) == pytest.approx(0.008)
    step = TrainConfig(lr=0.1, schedule="step", step_epochs=3, step_gamma=0.5)
    assert [lr_at(step, e * 10, 100, 10) for e in (0, 3, 6)] == pytest.approx([0.1, 0.05, 0.025])
    linear = TrainConfig(lr=0.4, schedule="linear", warmup_epochs=2)  # airbench's: warm-up, then straight to 0
    assert [lr_at(linear, s, 120, 10) for s in (0, 10, 20, 70, 120)] == pytest.approx([0.04, 0.22, 0.4, 0.2, 0])


def test_batched_augmentations():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(random_crop(images, 0), images)
    cropped = random_crop(images, 4)
    assert cropped.shape == images.shape
    # every crop is a shifted copy: its centre 24x24 appears in the original at some offset
    flipped = random_flip(images)
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and 10 < mirrored.sum() < 54
    # alternating flip: each image one way in an epoch and the other way in the next, half of them in each
    indices = torch.randperm(1000)[:64]
    even, odd = (alternating_flip(images, indices, 1000, epoch, seed=3) for epoch in (4, 5))
    mirrored_even = (even == images.flip(3)).flatten(1).all(1)
    assert torch.equal(torch.where(mirrored_even.view(-1, 1, 1, 1), images.flip(3), images), even)
    assert torch.equal(torch.where(mirrored_even.view(-1, 1, 1, 1), images, images.flip(3)), odd)
    assert 10 < mirrored_even.sum() < 54
    assert torch.equal(alternating_flip(images, indices, 1000, 6, seed=3), even)  # the same half every even epoch
    holes = cutout(torch.ones(64, 3, 32, 32), 8)
    zeros = (holes == 0).flatten(1).sum(1) / 3
    assert zeros.max() == 64 and (zeros <= 64).all() and (zeros > 0).all()


def test_bench_reports_both_loops_side_by_side(tmp_path):
    config = tmp_path / "quick.json"  # what is checked is the report's arithmetic: a tiny net times as well
    config.write_text(json.dumps(QUICK))
    out = core_cli("bench", "--config", str(config), "--device", "cpu", "--seconds", "0.5")
    report = json.loads(out.stdout)
    assert report["engine"]["images_per_s"] > 0 and report["seed_style"]["images_per_s"] > 0
    assert report["engine"]["steps"] >= 1 and report["seed_style"]["steps"] >= 1
    assert report["ratio"] == pytest.approx(report["engine"]["images_per_s"] / report["seed_style"]["images_per_s"])
    # the share of the device's peak: training FLOPs (6 x MACs per image) over a matrix product timed in this call
    assert report["peak"]["tflops"] > 0 and report["train_flops_per_image"] == 6 * report["macs_per_image"]
    assert report["engine"]["fraction_of_peak"] == pytest.approx(
        report["engine"]["images_per_s"] * report["train_flops_per_image"] / 1e12 / report["peak"]["tflops"])


def test_data_command_checks_a_copy_and_explains_a_missing_one(tmp_path):
    report = json.loads(core_cli("data", "--data", "builtin").stdout)
    assert (report["train"], report["test"]) == (5000, 1000) and report["test_per_class"] == [100] * 10
    out = core_main("data", "--data", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 2 and "nowhere" in out.stderr and "cifar10-jpg.tar.gz" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_created_but_unlaunched_run_is_queued_not_dead_and_stops_cleanly(tmp_path):
    run = create_run(RunConfig.from_dict(SMALL), "waiting", tmp_path / "runs")
    assert run.status()["state"] == "queued"  # no pid yet is not a dead process
    assert stop(run)["state"] == "stopped"


@pytest.mark.kernels
def test_a_time_limit_trains_for_that_time_with_the_schedule_stretched_over_it(tmp_path):
    """The loop in this process: what is tested is its clock and schedule, not the process around it."""
    from core.engine.loop import train

    cfg = RunConfig.from_dict({**SMALL, "train": {**SMALL["train"], "time_limit": 3, "log_every": 1}})
    run = create_run(cfg, "timed", tmp_path / "runs")
    assert train(run, "cpu", stop=lambda: False)["state"] == "finished", run.log_tail()
    last = [m for m in run.metrics() if m["kind"] == "epoch"][-1]
    assert last["trained"] >= 3  # it stops once the time is used, not after `epochs`
    assert last["lr"] == pytest.approx(0, abs=1e-9)  # and the cosine reached its end there
    steps = [m for m in run.metrics() if m["kind"] == "step"]
    assert len(steps) >= 2 and all(a["lr"] >= b["lr"] for a, b in zip(steps, steps[1:]))
    assert json.loads((run.checkpoints / "last.json").read_text())["trained"] == pytest.approx(last["trained"])
    results = json.loads(run.results_path.read_text())  # the last evaluation's, not a second one of the same weights
    assert (results["accuracy"], results["loss"]) == (last["eval_acc"], last["eval_loss"])


def test_a_time_limited_run_evaluates_often_when_evaluating_is_cheap_and_seldom_when_it_is_not():
    """25 evaluations in a time limit at most; an evaluation of 40 s (6 views in fp32 on a CPU) waits for 400 s
    of training, so 10 minutes of training take about 12 of wall time, not 15.5 (laptop-narrow, AVX2)."""
    assert next_evaluation(100, 600, pause=1) == 124
    assert next_evaluation(100, 600, pause=40) == 500
    assert next_evaluation(0, 1800, pause=25) == 250


def test_flip_and_alternating_flip_exclude_each_other():
    with pytest.raises(SpecError, match="choose one"):
        TrainConfig.from_dict({"augment": ["crop", "flip", "alternating_flip"]})


def test_six_view_tta_weighs_the_image_half_and_each_one_pixel_shift_a_quarter():
    x = torch.randn(4, 3, 32, 32)
    pixel = lambda batch: batch[:, 0, 10, 5:6]  # noqa: E731  a "model" that reads one pixel: where each view looks
    shifted = 0.5 * x[:, 0, 10, 5] + 0.25 * x[:, 0, 9, 4] + 0.25 * x[:, 0, 11, 6]  # up-left, down-right
    assert torch.allclose(views(pixel, x, False, True)[:, 0], shifted)
    mirror = 0.5 * x[:, 0, 10, 26] + 0.25 * x[:, 0, 9, 25] + 0.25 * x[:, 0, 11, 27]  # each view mirrored
    assert torch.allclose(views(pixel, x, True, True)[:, 0], (shifted + mirror) / 2)
    assert torch.equal(views(pixel, x, False, False)[:, 0], x[:, 0, 10, 5])


def test_frozen_batchnorm_scale_and_bias_learning_rate_multiplier():
    cfg = RunConfig.from_dict(QUICK).replace_train(freeze_bn_scale=True, bn_bias_lr_scale=64, weight_decay=5e-4)
    trainer = Trainer(cfg, torch.device("cpu"))
    bn = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(not m.weight.requires_grad for m in bn)
    others, biases = trainer.optimizer.param_groups
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn}
    assert not {id(m.weight) for m in bn} & {id(p) for p in others["params"]}
    assert biases["weight_decay"] == pytest.approx(5e-4 / 64)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    trainer.step(images, torch.randint(0, 10, (32,)), 0.01)
    assert (others["lr"], biases["lr"]) == (0.01, pytest.approx(0.64))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bn)  # the scale stays 1


def test_a_loaded_optimizer_keeps_the_flags_of_its_own_build_not_the_saved_ones():
    """A run started where the optimizer is not fused (a CPU) and resumed where it is (a GPU): the flags come
    from the optimizer built for the config and device, the moments from the save."""
    for kind in (torch.optim.SGD, torch.optim.Adam):
        params = [torch.nn.Parameter(torch.randn(5))]
        extra = {"momentum": 0.9} if kind is torch.optim.SGD else {}
        saved = kind(params, lr=0.1, **extra)
        params[0].grad = torch.ones(5)
        saved.step()
        state = saved.state_dict()
        fused = kind(params, lr=0.1, fused=True, **extra)  # torch fuses on the CPU too
        plain_load = kind(params, lr=0.1, fused=True, **extra)
        plain_load.load_state_dict(state)
        assert not plain_load.param_groups[0]["fused"]  # torch's own load takes the saved flags: the bug
        load_optimizer_state(fused, state)
        assert fused.param_groups[0]["fused"] is True
        key = "momentum_buffer" if kind is torch.optim.SGD else "exp_avg"
        assert torch.equal(fused.state[params[0]][key], saved.state[params[0]][key])
        fused.step()  # a fused step on the loaded state works


def test_lookahead_sets_the_lr_of_the_groups_its_optimizer_steps_after_loading():
    model = torch.nn.Linear(3, 2)
    first = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1))
    again = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1))
    again.load_state_dict(first.state_dict())
    for group in again.param_groups:
        group["lr"] = 0.001
    assert again.optimizer.param_groups[0]["lr"] == 0.001


def test_lookahead_that_ends_slow_averages_batchnorm_statistics_and_ends_on_the_slow_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    statistics = [model[1].running_mean, model[1].running_var]
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2, alpha=0.25, buffers=statistics)
    before, fast, inner_step = [t.clone() for t in opt.slow], [], opt.optimizer.step

    def recording_step():  # the fast weights and statistics the inner optimizer leaves, before any sync
        inner_step()
        fast[:] = [t.clone() for t in opt.fast]

    opt.optimizer.step = recording_step
    for _ in range(2):  # a sync after the second step: slow = before + 0.25 (fast - before), fast = slow
        opt.zero_grad()
        model(torch.randn(8, 3, 6, 6)).square().mean().backward()
        opt.step()
    for slow, old, new, now in zip(opt.slow, before, fast, opt.fast):
        assert torch.allclose(slow, old + 0.25 * (new - old)) and torch.equal(now, slow)
    assert len(opt.slow) == len(list(model.parameters())) + 2  # the running mean and variance, not the count
    opt.zero_grad()
    model(torch.randn(8, 3, 6, 6)).square().mean().backward()
    opt.step()  # one step past the sync: the model's weights and statistics are fast ones again
    assert not torch.equal(model[1].running_mean, opt.slow[-2])
    opt.end_on_slow()
    assert torch.equal(model[1].running_mean, opt.slow[-2]) and torch.equal(model[0].weight, opt.slow[0])


def test_weight_ema_is_averaged_models_math_and_layout_with_a_plain_counter():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    mine = WeightEMA(model)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3, 6, 6))  # moves BatchNorm's running statistics
        theirs.update_parameters(model)
        mine.update(model, 0.9)
    assert isinstance(mine.updates, int)  # no tensor to test (and sync on) at every update
    state = mine.state_dict()
    assert state.keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        if value.is_floating_point():  # BatchNorm's batch count: AveragedModel keeps the first, WeightEMA the last
            assert torch.allclose(state[key], value, atol=1e-6), key
    loaded = WeightEMA(model)
    loaded.load_state_dict(theirs.state_dict())  # a checkpoint saved before WeightEMA loads
    assert loaded.updates == 4


def in_process_run(tmp_path, name: str, stop_after: int | None = None, arch: dict | None = None, **train) -> Run:
    """A run of QUICK (or `arch`) trained by the loop in this process; `stop_after` steps, Stop is pressed (then
    it is resumed)."""
    from core.engine.loop import train as train_run

    cfg = RunConfig.from_dict({**QUICK, "arch": arch or QUICK["arch"],
                               "train": {**QUICK["train"], "precision": "fp32", **train}})
    run = create_run(cfg, name, tmp_path / "runs")
    if stop_after is not None:
        calls = iter(range(10**9))
        status = train_run(run, "cpu", stop=lambda: next(calls) + 1 >= stop_after)
        assert status["state"] == "stopped", run.log_tail()
    assert train_run(run, "cpu", stop=lambda: False)["state"] == "finished", run.log_tail()
    return run


@pytest.mark.kernels
def test_after_a_resume_lookahead_s_optimizer_follows_the_schedule_step_by_step(tmp_path, monkeypatch):
    seen, step = [], Trainer.step

    def recording(self, images, labels, lr, progress=1.0):
        out = step(self, images, labels, lr, progress)
        seen.append([g["lr"] for g in self.optimizer.optimizer.param_groups])  # what the inner optimizer used
        return out

    monkeypatch.setattr(Trainer, "step", recording)
    run = in_process_run(tmp_path, "lookahead", stop_after=10, epochs=2, lookahead=True, schedule="cosine")
    assert "resumed at epoch 0 step 10" in run.log_path.read_text()
    t, steps_per_epoch = run.config().train, 5000 // 128
    total = t.epochs * steps_per_epoch
    assert len(seen) == total  # every step once: 10 before the stop, the rest after
    assert [lrs[0] for lrs in seen] == pytest.approx([lr_at(t, s, total, steps_per_epoch) for s in range(total)])


WHITENED = {**QUICK_ARCH, "stem": {**QUICK_ARCH["stem"], "kernel_size": 1, "whiten": True}}  # 6 filters: quick


@pytest.mark.kernels
@pytest.mark.parametrize("arch, recipe", [
    (WHITENED, {"optimizer": "sgd", "nesterov": True, "ema_decay": 0.9, "averaging_ramp": True, "freeze_bn_scale": True,
     "bn_bias_lr_scale": 8, "schedule": "linear", "warmup_epochs": 0.5, "label_smoothing": 0.2,
     "augment": ["crop", "alternating_flip", "cutout"], "tta_flip": True, "tta_shift": True}),
    (QUICK_ARCH, {"optimizer": "adamw", "lr": 0.003, "lookahead": True, "averaging_ramp": True, "ema_decay": 0.5,
                  "lookahead_alpha": 0.3, "lookahead_ends_slow": True}),
], ids=["whitened-sgd-speedrun", "adamw-lookahead-ema"])
def test_a_run_stopped_at_an_epoch_boundary_and_resumed_ends_with_the_same_weights(tmp_path, arch, recipe):
    whole = in_process_run(tmp_path, "whole", epochs=2, arch=arch, **recipe)
    resumed = in_process_run(tmp_path, "resumed", stop_after=5000 // 128, epochs=2, arch=arch, **recipe)
    assert "resumed at epoch 0 step 39" in resumed.log_path.read_text()
    a, b = load_checkpoint(whole.checkpoints, "last"), load_checkpoint(resumed.checkpoints, "last")
    assert a.weights.keys() == b.weights.keys()
    assert [k for k in a.weights if not torch.equal(a.weights[k], b.weights[k])] == []
    (ta, pa, _), (tb, pb, _) = load_train_state(whole.checkpoints), load_train_state(resumed.checkpoints)
    assert ta.keys() == tb.keys() and pa == pb
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []  # model, optimizer, EMA, Lookahead
    if recipe.get("lookahead_ends_slow"):  # 78 steps, the last sync at 75: the run ended on the slow weights anyway
        slow = [v for k, v in ta.items() if k.startswith("optimizer.slow.")]
        ends = [v for k, v in ta.items() if k.startswith("model.") and k.endswith(("running_mean", "running_var",
                                                                                     "conv1.weight"))]
        assert ends and all(any(torch.equal(e, s) for s in slow) for e in ends)
    assert json.loads(whole.results_path.read_text())["accuracy"] == json.loads(resumed.results_path.read_text())[
        "accuracy"]


@pytest.mark.long
@pytest.mark.kernels
def test_the_laptop_preset_trains_an_epoch_of_the_slice_with_its_tricks(tmp_path):
    """A sanity check of the preset, not a measure of it: an epoch of the built-in slice, every trick on. On a
    CPU that trains in fp32 (this test's second pass, under the AVX2 cap) it is what `--preset laptop` trains
    there: its narrow variant, through the same layers at half the widths."""
    from core.engine.loop import train
    from core.nn.model import build_model

    name = preset_for_cpu("laptop", computes_bf16=amp_policy("cpu", None, "auto").dtype is not None)
    cfg = RunConfig.from_dict(RunConfig.from_preset(name).to_dict() | {"data": "builtin"})
    run = create_run(cfg.replace_train(epochs=1, time_limit=0), "speedrun", tmp_path / "runs")
    assert train(run, "cpu", stop=lambda: False)["state"] == "finished", run.log_tail()
    epoch = [m for m in run.metrics() if m["kind"] == "epoch"][-1]
    assert epoch["epoch"] == 1 and 0 < epoch["train_loss"] < 2.5  # not diverged: chance is ln 10 = 2.30
    last = load_checkpoint(run.checkpoints, "last")
    assert last.meta["tta_flip"] and last.meta["tta_shift"]
    # the stem's filters are the whitening of the training images, untouched by training
    expected = build_model(cfg.arch)
    train_images = load_dataset("builtin").train.images
    expected.whiten_stem(Normalizer(last.meta["mean"], last.meta["std"])(train_images))
    assert torch.allclose(last.weights["stem.0.weight"], expected.stem[0].weight, atol=1e-6)
    scales = [v for k, v in last.weights.items() if k.endswith(("bn1.weight", "bn2.weight", "stem.3.weight"))]
    assert scales and all(torch.equal(s, torch.ones_like(s)) for s in scales)  # frozen BatchNorm scales
