"""The Train and Runs pages, run headless through Streamlit's AppTest, on runs folders of the tests' own.

A run that looks active is faked with this test process's pid (alive for as long as the test runs), so the
pages treat it as training; nothing here may stop such a run, which would signal pytest. The launch tests
start real training processes and wait for them.
"""
import json
import os
import re
import shutil
import time
from dataclasses import fields

import pandas as pd
import pytest
from filelock import FileLock
from streamlit.testing.v1 import AppTest

from tests.helpers import APP, QUICK_ARCH, assert_clean, core_cli, holder, wait_for
from core.data.sources import BUILTIN_ARCHIVE
from core.design.budget import BUDGET, count
from core.design.config import RunConfig, TrainConfig
from core.design.presets import preset_spec
from core.design.spec import ArchSpec
from core.nn.infer import cpu_has_bf16
from core.runs.queue import launch_options
from core.processes import process_start_time
from core.runs.run import Run, stop
from core.runs.speeds import (estimate, kernels_text, probe_lock_path, probe_running, read_machine,
                              record_speed, update_machine)
from core.units import duration_text

TINY = ArchSpec.from_dict(QUICK_ARCH)  # trains an epoch in seconds


@pytest.fixture
def cpu_timed(cache) -> dict:
    """This machine known as a CPU alone, trained at 100 images/s on resnet20 (as a probe would record it)."""
    update_machine(lambda machine: machine | {"devices": {"cpu": "CPU"}})
    record_speed("cpu", "CPU", 100.0, count(preset_spec("resnet20")).macs, "timed on resnet20")
    return read_machine()


@pytest.fixture
def trained_copy(trained_runs, runs_dir) -> Run:
    """A copy of the trained `small`, to change or delete."""
    shutil.copytree(trained_runs / "small", runs_dir / "small")
    return Run(runs_dir / "small")


def open_page(page: str, design: ArchSpec | None = None, preset: str | None = None) -> AppTest:
    """The app opened on Design (as a visitor does), then switched to `page` with `design` in session."""
    app = AppTest.from_file(APP, default_timeout=120).run()
    if design is not None:
        app.session_state["design_draft"] = design.to_dict()
        app.session_state["design"] = design.to_dict()
        app.session_state["design_preset"] = preset
    return app.switch_page(f"pages/{page}.py").run()


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def chart_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart")]


def chart_titles(app: AppTest) -> list[str]:
    return [spec.get("title") for spec in chart_specs(app)]


def run_name_box(app: AppTest):
    return next(box for box in app.text_input if box.label == "Run name")


def followed_box(app: AppTest):
    return next(box for box in app.selectbox if box.label == "Run")


def progress_text(app: AppTest) -> str:
    return app.get("progress")[0].proto.text


def fake_state(run: Run, **status) -> None:
    """Make `run` look as `status` says, held by this process (alive) when it looks active; with no heartbeat, as
    no training process writes one for it."""
    run.heartbeat_path.unlink(missing_ok=True)
    pid = os.getpid()
    run.status_path.write_text(json.dumps({"created": time.time(), "pid": pid, "pid_start": process_start_time(pid),
                                           "device": "cpu", "device_name": "CPU"} | status))


def wait_for_state(run: Run, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.status()
        if status.get("state") in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{run.name} did not become {' or '.join(states)} within {timeout:.0f} s: {run.status()}\n"
                         f"{run.log_tail()}")


# ---- empty states -------------------------------------------------------------------------------------

def test_without_runs_the_runs_page_says_to_train_with_a_button(runs_dir):
    app = open_page("runs")
    assert_clean(app)
    assert "No runs yet" in texts(app.info)
    button(app, "Train a network").click().run()
    assert_clean(app)
    assert app.title[0].value == "Train"
    assert any("Launch a run above" in c.value for c in app.caption)


def test_without_gpu_or_dataset_the_train_page_says_what_to_do(runs_dir, cpu_timed, monkeypatch):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(runs_dir)  # no ./data here
    app = open_page("train")
    assert_clean(app)
    assert "No full copy of CIFAR-10" in texts(app.info)
    button(app, "Download CIFAR-10").click().run()
    assert app.get_by_key("train_data").value == "download"
    assert any("needs internet" in c.value for c in app.caption)
    warning = texts(app.warning)
    assert "No GPU found" in warning and "per epoch" in warning
    assert any(b.label == "Use the built-in slice" for b in app.button)


def test_the_page_draws_at_once_and_the_estimate_fills_in_from_a_probe_in_the_background(runs_dir, cache,
                                                                                         monkeypatch):
    import core.engine.trainer
    import core.measure.probe

    steps = []  # a training step or a timing in the script run would land here
    monkeypatch.setattr(core.engine.trainer.Trainer, "step", lambda *args: steps.append("step"))
    monkeypatch.setattr(core.measure.probe, "measure", lambda *args: steps.append("measure"))
    app = open_page("train")  # the default design, a seed-sized network
    assert_clean(app)
    assert not button(app, "Launch").disabled and app.get_by_key("train:epochs").value == TrainConfig().epochs
    assert "Looking for this machine's GPUs and timing it in the background" in texts(app.info)
    assert steps == []

    deadline = time.monotonic() + 300  # the probe, in a process of its own, finds the CPU and times it
    while "speeds" not in read_machine() or probe_running():
        assert time.monotonic() < deadline, (cache / "machine.log").read_text()
        time.sleep(0.5)
    app.run()
    assert_clean(app)
    figure = estimate(preset_spec("resnet26-seed"), "cpu", "builtin")
    shown = texts(app.warning) + texts(app.info)
    assert f"about **{duration_text(figure.epoch_s)} per epoch** of the built-in slice" in shown
    assert "An estimate from a short timing of the resnet20 preset on this machine" in shown
    assert steps == []


# ---- settings, data and budget ------------------------------------------------------------------------

def test_every_training_setting_has_a_widget_with_help_starting_from_the_presets_recipe(runs_dir):
    app = open_page("train", preset_spec("resnet10-wide"), "resnet10-wide")
    assert_clean(app)
    recipe = RunConfig.from_preset("resnet10-wide").train
    for field in fields(TrainConfig):
        if field.name == "time_limit":  # "Train for": epochs, or a time budget in minutes
            assert app.get_by_key("train_length").help and recipe.time_limit == 0
            assert app.get_by_key("train_length").value == "epochs" and not app.get_by_key("train:epochs").disabled
            continue
        widget = app.get_by_key(f"train:{field.name}")
        assert widget.help, field.name
        value = widget.value
        assert (list(value) if field.name == "augment" else value) == \
            (list(recipe.augment) if field.name == "augment" else getattr(recipe, field.name)), field.name
    assert app.get_by_key("train:optimizer").value == "adam"
    assert app.get_by_key("train:momentum").disabled  # adam has no momentum


def test_a_preset_made_for_a_time_budget_opens_with_it_and_says_what_it_is_for(runs_dir, cpu_timed):
    app = open_page("train", preset_spec("laptop"), "laptop")
    assert_clean(app)
    assert app.get_by_key("train_length").value == "time" and app.get_by_key("train_minutes").value == 30
    assert app.get_by_key("train:epochs").disabled  # the time sets the length
    about = next(c.value for c in app.caption if c.value.startswith("**laptop**: "))
    assert "The most accuracy for a fixed time on a CPU without a GPU" in about
    assert about.endswith("Its recipe is a time budget, 30 min of training rather than a number of epochs: made "
                          "for a fixed time.")
    figure = estimate(preset_spec("laptop"), "cpu", "builtin")
    assert f"so about {1800 / figure.epoch_s:.3g} epochs in a time budget of 30 min" in texts(app.warning)
    assert "for 30 min of training" in next(c.value for c in app.caption if c.value.startswith("Launch trains"))
    app.get_by_key("train_length").set_value("epochs").run()  # the user's choice: the recipe's epochs
    assert_clean(app)
    assert not app.get_by_key("train:epochs").disabled and app.get_by_key("train:epochs").value == 10
    assert "for 10 epochs" in next(c.value for c in app.caption if c.value.startswith("Launch trains"))
    assert "(changed here)" in next(c.value for c in app.caption if c.value.startswith("They start from"))


def test_on_a_cpu_that_trains_in_fp32_laptop_offers_its_narrow_variant(runs_dir, cache, monkeypatch):
    """The probe (a real `core machine`, under an AVX2 CPU's ISA caps) finds no native bf16; the CPU device then
    offers laptop-narrow for laptop, and the button makes it the design."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    core_cli("machine", "--seconds", "0.1")
    assert read_machine()["cpu"]["computes_bf16"] is False
    app = open_page("train", preset_spec("laptop"), "laptop")
    app.get_by_key("train_device").set_value("cpu").run()
    assert_clean(app)
    offer = texts(app.info)  # why: the CPU's own lack, or (with AMX or AVX512-BF16, as here) only the caps
    why = "Its bf16 kernels are capped off here (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)" \
        if cpu_has_bf16() else "This CPU has no native bf16 (AMX or AVX512-BF16)"
    assert f"{why}: it trains **laptop** in fp32" in offer
    assert "laptop at half its widths (32, 128, 128)" in offer
    button(app, "Train laptop-narrow instead").click().run()
    assert_clean(app)
    assert app.session_state["design_preset"] == "laptop-narrow"
    assert "**laptop-narrow**" in texts(app.markdown) and "in fp32" not in texts(app.info)


def test_a_time_budget_is_the_launched_runs_time_limit_and_its_progress_follows_the_time(runs_dir):
    app = open_page("train", TINY)
    assert app.get_by_key("train_length").value == "epochs"
    app.get_by_key("train_length").set_value("time").run()
    assert app.get_by_key("train_minutes").value == 30  # a half hour to start from
    app.get_by_key("train_minutes").set_value(0.1).run()
    app.get_by_key("train_data").set_value("builtin").run()
    app.get_by_key("train_device").set_value("cpu").run()
    run_name_box(app).input("budget").run()
    assert "for 6 s of training" in next(c.value for c in app.caption if c.value.startswith("Launch trains"))
    button(app, "Launch").click().run()
    assert_clean(app)
    run = Run(runs_dir / "budget")
    try:
        assert json.loads(run.config_path.read_text())["train"]["time_limit"] == 6.0
        assert wait_for_state(run, ("finished", "failed"))["state"] == "finished", run.log_tail()
        app.run()
        assert " · 6 s of 6 s trained" in progress_text(app)  # its time, not its 30 epochs
        assert app.get("progress")[0].proto.value == 100
    finally:
        stop(run)
        wait_for_state(run, ("finished", "failed", "stopped"))


def test_the_page_says_which_kernels_train_here_once_the_probe_has_recorded_the_cpu(runs_dir, cpu_timed):
    from core.nn.platform import describe

    app = open_page("train", TINY)
    assert not [c for c in app.caption if c.value.startswith("Kernels that train here")]  # no record of the CPU
    cpu = describe()
    update_machine(lambda machine: machine | {"cpu": cpu})  # as the probe records it
    app.run()
    assert_clean(app)
    line = next(c.value for c in app.caption if c.value.startswith("Kernels that train here"))
    assert line == f"Kernels that train here: {kernels_text(cpu)}"
    assert line.startswith(f"Kernels that train here: {cpu['cpu']}: oneDNN ") and " · ATen " in line


def test_a_setting_out_of_range_names_it_and_blocks_launch(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train:lr").set_value(20.0).run()
    assert_clean(app)
    assert "Learning rate: 20.0 is out of range" in texts(app.error)
    assert button(app, "Launch").disabled


def test_settings_survive_a_page_switch_and_go_back_to_the_recipe(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train:epochs").set_value(3).run()
    app.switch_page("pages/runs.py").run()
    app.switch_page("pages/train.py").run()
    assert app.get_by_key("train:epochs").value == 3
    button(app, "Back to the recipe").click().run()
    assert_clean(app)
    assert app.get_by_key("train:epochs").value == TrainConfig().epochs


def test_a_missing_data_path_is_named_and_blocks_launch(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train_data").set_value("path").run()
    app.get_by_key("train_data_path").input(str(runs_dir / "nowhere")).run()
    assert_clean(app)
    assert "nowhere: no such file or folder" in texts(app.error)
    assert button(app, "Launch").disabled


def test_a_copy_on_this_machine_can_be_checked_before_launch(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train_data").set_value("path").run()
    app.get_by_key("train_data_path").input(str(BUILTIN_ARCHIVE)).run()  # class folders in a .tar.gz
    assert not app.error and not button(app, "Launch").disabled
    button(app, "Check it now").click().run()
    assert_clean(app)
    assert "5,000 training and 1,000 test images" in texts(app.success)


def test_a_download_without_internet_says_so(runs_dir, offline):
    app = open_page("train", TINY)
    app.get_by_key("train_data").set_value("download").run()
    app.get_by_key("train_download_dir").input(str(runs_dir.parent / "cifar")).run()
    button(app, "Download").click().run()
    assert_clean(app)
    assert "The download failed" in texts(app.error) and "could not download CIFAR-10" in texts(app.error)
    assert button(app, "Launch").disabled
    # issue 27, item 15: advice in the page's terms, not the command line's
    assert "A copy on this machine" in texts(app.error)
    assert not re.search(r"--data|CIFAR10_DATA|\.\./shared", texts(app.error)), texts(app.error)


def test_a_failed_download_gives_the_pages_advice_not_the_command_lines(runs_dir):
    """Issue 27, item 15, where the machine is online too: a folder that can't be created fails the download."""
    blocker = runs_dir.parent / "a-file"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    app = open_page("train", TINY)
    app.get_by_key("train_data").set_value("download").run()
    app.get_by_key("train_download_dir").input(str(blocker / "cifar")).run()
    button(app, "Download").click().run()
    assert_clean(app)
    shown = texts(app.error)
    assert "The download failed" in shown and "A copy on this machine" in shown
    assert not re.search(r"--data|CIFAR10_DATA|\.\./shared", shown), shown


def test_the_launch_line_names_a_copy_without_a_stray_article(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train_data").set_value("path").run()
    app.get_by_key("train_data_path").input(str(BUILTIN_ARCHIVE)).run()
    launch_line = next(c.value for c in app.caption if c.value.startswith("Launch trains"))
    assert f" on {BUILTIN_ARCHIVE.name}, on " in launch_line and " on the " not in launch_line


def test_an_over_budget_design_cannot_be_launched_and_leads_back_to_design(runs_dir):
    app = open_page("train", preset_spec("resnet18"), "resnet18")
    assert_clean(app)
    over = count(preset_spec("resnet18")).params - BUDGET
    assert f"{over:,} over the budget of {BUDGET:,}" in texts(app.error)
    assert button(app, "Launch").disabled
    assert button(app, "Launch").help == f"The design is {over:,} parameters over budget."
    button(app, "Fit it in Design").click().run()
    assert app.title[0].value == "Design"
    assert not list(runs_dir.iterdir())


# ---- following runs --------------------------------------------------------------------------------------

def test_a_running_run_shows_its_progress_charts_and_a_stop_button(trained_copy):
    halfway = [line for line in trained_copy.metrics() if line["epoch"] < 1.6]  # 39 steps an epoch, logged every 20
    trained_copy.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in halfway))
    fake_state(trained_copy, state="running")
    app = open_page("train", TINY)
    assert_clean(app)
    assert followed_box(app).value == "small"  # the active run, followed by default
    halfway_at = halfway[-1]["epoch"]  # the last line before 1.6 (one at least every 20 steps and every 3 s)
    assert progress_text(app).startswith(f"Epoch {halfway_at:.2f}".rstrip("0").rstrip(".") + " of 2 · ")
    assert progress_text(app).endswith(" left")
    assert {"Loss", "Accuracy", "Learning rate"} <= set(chart_titles(app))
    assert any(b.label == "Stop" for b in app.button)
    assert not any(b.label == "Resume" for b in app.button)


def test_a_queued_run_says_what_it_waits_for(trained_copy):
    trained_copy.metrics_path.unlink()
    fake_state(trained_copy, state="queued", waiting_for="cpu is busy with example")
    app = open_page("train", TINY)
    assert_clean(app)
    assert "Queued: cpu is busy with example" in texts(app.info)


def test_a_failed_run_shows_its_error_its_log_and_a_resume_button(trained_copy):
    fake_state(trained_copy, state="failed", error="out of memory: use a smaller batch size", pid=None)
    app = open_page("train", TINY)
    assert_clean(app)
    error = texts(app.error)
    assert "out of memory: use a smaller batch size" in error
    assert "Its last checkpoint is at epoch 2: Resume continues" in error
    assert app.expander[0].proto.expanded and "epoch 2/2" in app.code[0].value
    assert any(b.label == "Resume" for b in app.button)


def test_resume_takes_a_smaller_batch_after_running_out_of_memory(trained_copy, cache):
    """And the click lands though the button's help changed since it was drawn: on a busy machine the probe
    told the devices while the page was open ("on Best available", then "on CPU"), and a button known by its
    label and help lost the click."""
    fake_state(trained_copy, state="failed", pid=None, error="out of memory at batch 128 (...): resume with a "
                                                              "batch of 64")
    cache.mkdir(parents=True)
    with FileLock(probe_lock_path()):  # a probe is looking: the page's own gives way, the devices are unknown
        app = open_page("train", TINY)
        batch = app.get_by_key("train_resume_batch:small")
        assert batch.value == 128  # the run's own
        batch.set_value(64).run()
        assert button(app, "Resume").help.startswith("Continue from the last checkpoint on Best available")
    update_machine(lambda machine: machine | {"devices": {"cpu": "CPU"}})  # and now it has told
    button(app, "Resume").click().run()
    assert_clean(app)
    assert trained_copy.config().train.batch_size == 64
    assert wait_for_state(trained_copy, ("finished", "failed"))["state"] == "finished", trained_copy.log_tail()
    assert "batch 128 -> 64: continuing at epoch 2 step 0" in trained_copy.log_path.read_text()


def test_a_run_that_auto_moved_to_the_cpu_says_why_on_the_page(trained_copy):
    note = "GPU 0 (Tesla V100-SXM2-16GB, sm_70) has no kernels in torch ...: install the CUDA 12.6 build, which " \
           "keeps sm_70: pip install torch==... --index-url https://download.pytorch.org/whl/cu126. Training on the " \
           "CPU instead."
    fake_state(trained_copy, state="finished", pid=None, device_note=note)
    app = open_page("train", TINY)
    assert_clean(app)
    assert note in texts(app.warning)


def test_a_mac_trains_on_apple_s_gpu_by_default_and_a_gpu_this_torch_cannot_use_is_named(runs_dir, cache):
    problem = "GPU 1 (Tesla P100-PCIE-16GB, sm_60) has no kernels in torch ...: install the CUDA 12.6 build"
    update_machine(lambda machine: machine | {"devices": {"mps": "Apple GPU", "cpu": "CPU"},
                                              "gpu_problems": [problem]})
    app = open_page("train", TINY)
    assert_clean(app)
    device = app.get_by_key("train_device")
    assert device.value == "mps" and device.options == ["Apple GPU (mps)", "CPU"]
    assert problem in texts(app.warning)
    assert launch_options("mps") == {"device": "mps"}  # one process: no DDP on Apple's GPU


def test_open_in_design_clones_the_design_and_the_settings(trained_runs, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(trained_runs))
    small = Run(trained_runs / "small").config()
    app = open_page("train", TINY)
    button(app, "Open in Design").click().run()
    assert_clean(app)
    assert app.title[0].value == "Design"
    assert app.session_state["design"] == small.arch.to_dict()
    app.switch_page("pages/train.py").run()
    assert app.get_by_key("train:lr").value == small.train.lr == 0.05
    assert app.get_by_key("train:epochs").value == small.train.epochs


def test_launching_trains_in_a_background_process_which_stops_resumes_and_trains_longer(runs_dir):
    app = open_page("train", TINY)
    app.get_by_key("train:epochs").set_value(1).run()
    app.get_by_key("train_data").set_value("builtin").run()
    app.get_by_key("train_device").set_value("cpu").run()
    run_name_box(app).input("tiny").run()
    button(app, "Launch").click().run()
    assert_clean(app)
    run = Run(runs_dir / "tiny")
    try:
        assert run.config().arch == TINY and run.config().train.epochs == 1 and run.config().data == "builtin"
        assert followed_box(app).value == "tiny"
        assert wait_for_state(run, ("running", "finished", "failed"))["state"] != "failed", run.log_tail()
        assert wait_for_state(run, ("finished", "failed"))["state"] == "finished", run.log_tail()
        app.run()
        assert progress_text(app).startswith("Epoch 1 of 1")
        app.get_by_key("train_resume_epochs:tiny").set_value(3).run()  # two more: time enough to stop it
        button(app, "Train longer").click().run()
        assert_clean(app)
        wait_for(lambda: run.status()["state"] == "running" and run.config().train.epochs == 3, 240,
                 "the run training longer")  # the training process writes the new count
        app.run()
        button(app, "Stop").click().run()
        assert wait_for_state(run, ("stopped", "failed"))["state"] == "stopped", run.log_tail()
        app.run()
        saved = json.loads((run.checkpoints / "last.json").read_text())
        assert f"Stopped at epoch {saved['epoch']}." in texts(app.info)
        button(app, "Resume").click().run()
        assert_clean(app)
        assert wait_for_state(run, ("finished", "failed"))["state"] == "finished", run.log_tail()
        assert [line["epoch"] for line in run.metrics() if line["kind"] == "epoch"] == [1, 2, 3]
    finally:
        stop(run)
        wait_for_state(run, ("finished", "failed", "stopped"))


def test_the_cpu_trains_as_two_processes_and_the_queue_says_which_run_holds_it(runs_dir, cpu_timed):
    app = open_page("train", TINY)
    assert app.get_by_key("train_device").options == ["CPU"] and not app.multiselect  # no GPU: no GPU picker
    app.get_by_key("train:epochs").set_value(20).run()  # long enough to see it running: it is stopped then
    app.get_by_key("train_data").set_value("builtin").run()
    app.get_by_key("train_processes").set_value(2).run()
    run_name_box(app).input("pair").run()
    assert "Queue: every device is free" in texts(app.caption)
    button(app, "Launch").click().run()
    assert_clean(app)
    run = Run(runs_dir / "pair")
    try:
        status = wait_for_state(run, ("running", "finished", "failed"))
        assert status["state"] == "running" and status["world_size"] == 2, run.log_tail()
        app.run()
        assert "Queue: CPU is busy with pair" in texts(app.caption)
    finally:
        stop(run)
        wait_for_state(run, ("finished", "failed", "stopped"))
    assert run.status()["state"] == "stopped", run.log_tail()


def test_a_run_on_two_gpus_waits_until_both_are_free(runs_dir, cache, monkeypatch):
    """GPUs faked for the queue's bookkeeping: the run never gets to need CUDA."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    update_machine(lambda machine: machine | {"devices": {"cuda:0": "H100", "cuda:1": "H100", "cpu": "CPU"}})
    other = holder("other-run", "1,")
    try:
        assert other.stdout.readline() == "holding: 1\n"
        app = open_page("train", TINY)
        app.get_by_key("train_device").set_value("cuda").run()
        assert app.get_by_key("train_gpus").value == ["cuda:0"]
        app.get_by_key("train_gpus").set_value(["cuda:0", "cuda:1"]).run()
        run_name_box(app).input("pair").run()
        button(app, "Launch").click().run()
        assert_clean(app)
        run = Run(runs_dir / "pair")
        status = wait_for(lambda: run.status().get("waiting_for") and run.status(), what="pair to wait")
        assert status["waiting_for"] == "gpu1 is busy with other-run" and status["world_size"] == 2
        app.run()
        assert "Queue: GPU1 is busy with other-run; pair waits." in texts(app.caption)
        stop(run)
        assert wait_for_state(run, ("stopped", "failed", "finished"))["state"] == "stopped", run.log_tail()
    finally:
        other.stdin.close()
        other.wait(timeout=30)


# ---- the runs page ---------------------------------------------------------------------------------------

def test_the_runs_page_lists_a_run_with_its_accuracy_and_confusion_matrix(trained_runs, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(trained_runs))
    summary = Run(trained_runs / "small").summary()
    results = json.loads((trained_runs / "small" / "results.json").read_text())
    app = open_page("runs")
    assert_clean(app)
    table = app.dataframe[0].value.set_index("Run")
    assert table.loc["small", "State"] == "finished" and table.loc["small", "Parameters"] == summary["params"]
    assert table.loc["small", "Best accuracy"] == pytest.approx(summary["best_acc"])
    assert table.loc["small", "Epochs"] == "2 of 2" and table.loc["small", "Processes"] == 1
    assert app.get_by_key("runs_compare").value == ["small"]
    specs = json.dumps(chart_specs(app))
    assert '"Predicted"' in specs and '"Accuracy per class"' not in specs  # the confusion matrix is drawn
    assert f"**{results['accuracy']:.2%}** on the test split" in texts(app.markdown)
    assert "Accuracy on the evaluation split" in chart_titles(app)


def test_deleting_a_run_asks_first_and_refuses_an_active_one(trained_copy):
    app = open_page("runs")
    button(app, "Delete…").click().run()
    assert any("can't be undone" in m.value for m in app.markdown)
    button(app, "Cancel").click().run()
    assert trained_copy.exists() and not any(m.value.startswith("Delete **") for m in app.markdown)

    fake_state(trained_copy, state="running")
    app = open_page("runs")
    button(app, "Delete…").click().run()
    button(app, "Delete").click().run()
    assert_clean(app)
    assert "stop it before deleting it" in texts(app.error) and trained_copy.exists()

    fake_state(trained_copy, state="finished", pid=None)
    app = open_page("runs")
    button(app, "Delete…").click().run()
    button(app, "Delete").click().run()
    assert_clean(app)
    assert not trained_copy.dir.exists()
    assert "No runs yet" in texts(app.info)


# ---- issue 19: live and honest -----------------------------------------------------------------------------

def beat(run: Run, **fields) -> None:
    """The run's heartbeat as its training process writes it (core.runs.watch.Heartbeat)."""
    run.heartbeat_path.write_text(json.dumps({"phase": "training", "epoch": 0, "step": 0, "step_time": None,
                                              "pid": os.getpid(), "time": time.time()} | fields))


def test_before_its_first_line_a_run_says_what_it_does_then_step_by_step_with_a_time_left(trained_copy):
    trained_copy.metrics_path.unlink()
    fake_state(trained_copy, state="running")
    beat(trained_copy, phase="loading data")
    app = open_page("train", TINY)
    assert_clean(app)
    assert progress_text(app) == "Loading data…"
    beat(trained_copy, phase="warming up", step=1)
    app.run()
    assert progress_text(app).startswith("Epoch 0.03 of 2 · step 1 of 39 · warming up (the first steps compile")
    # the heartbeat's median step time gives the time left before any line: 39 steps of 128 images at 0.5 s
    beat(trained_copy, phase="training", step=5, step_time=0.5)
    app.run()
    assert_clean(app)
    text = progress_text(app)
    assert text.startswith("Epoch 0.13 of 2 · step 5 of 39 · 256 images/s · about ") and text.endswith(" left")


def test_a_time_budget_run_never_reads_as_done_early_and_its_charts_span_what_its_time_holds(trained_copy):
    """Issue 27, item 10: "Epoch 1 · step 0 of 19", "step 19 of 19" beside a fractional epoch, "2 min of 2 min
    trained · about 26 s left", and a 2-minute run's charts spanning its recipe's 30 epochs."""
    cfg = json.loads(trained_copy.config_path.read_text())
    cfg["train"] |= {"time_limit": 120.0, "epochs": 30}
    trained_copy.config_path.write_text(json.dumps(cfg))
    lines = [json.loads(line) for line in trained_copy.metrics_path.read_text().splitlines()]
    for line in lines:  # the two epochs took 94 s of training
        line["elapsed"] = line.get("elapsed", 0) * 0 + 47 * line.get("epoch", 0)
        if line.get("kind") == "epoch":
            line["trained"] = 47 * line["epoch"]
    trained_copy.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fake_state(trained_copy, state="running")
    beat(trained_copy, epoch=2, step=0, step_time=0.5)
    app = open_page("train", TINY)
    assert_clean(app)
    text = progress_text(app)
    assert text.startswith("Epoch 2 · 1.6 min of 2 min trained") and "step 0" not in text, text
    beat(trained_copy, epoch=1, step=39, step_time=0.5)
    app.run()
    assert "step 39 of 39" not in progress_text(app)
    epochs_axis = [spec for spec in chart_specs(app) if "Loss" in str(spec.get("title"))][0]
    assert "30" not in json.dumps(epochs_axis.get("layer", [{}])[0].get("encoding", {}).get("x", {}))
    assert any(m.label == "Time so far" for m in app.metric)


def test_a_finished_time_budget_run_offers_no_epochs_it_would_never_train(trained_copy):
    """Issue 27, item 10: a 2-minute run offered "Epochs in all: 30" and Train longer, which its budget, spent,
    would end at once."""
    cfg = json.loads(trained_copy.config_path.read_text())
    cfg["train"] |= {"time_limit": 120.0, "epochs": 30}
    trained_copy.config_path.write_text(json.dumps(cfg))
    app = open_page("train", TINY)
    assert_clean(app)
    assert not any(n.label == "Epochs in all" for n in app.number_input)
    assert not any(b.label == "Train longer" for b in app.button)
    assert any(c.value.startswith("It trained its whole time budget, 2 min.") for c in app.caption)


def test_a_time_limited_runs_progress_is_its_time_not_its_epochs(trained_copy):
    cfg = json.loads(trained_copy.config_path.read_text())
    cfg["train"] |= {"time_limit": 60.0, "epochs": 30}
    trained_copy.config_path.write_text(json.dumps(cfg))
    trained_copy.metrics_path.write_text(json.dumps({"kind": "step", "epoch": 20 / 39, "step": 20, "train_loss": 2.0,
                                                     "lr": 0.1, "images_per_s": 100.0, "elapsed": 15.0}) + "\n")
    fake_state(trained_copy, state="running")
    beat(trained_copy, step=20, step_time=0.5)
    app = open_page("train", TINY)
    assert_clean(app)
    text = progress_text(app)
    assert text.startswith("Epoch 0.51 · 15 s of 60 s trained · step 20 of 39") and text.endswith("about 45 s left")
    assert app.get("progress")[0].proto.value == 25  # 15 s of 60


def test_one_wild_test_loss_is_clipped_on_the_loss_chart_not_flattening_the_train_loss(trained_copy):
    lines = trained_copy.metrics()
    first_epoch = next(line for line in lines if line["kind"] == "epoch")
    first_epoch["eval_loss"] = 126.4
    trained_copy.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = open_page("train", TINY)
    assert_clean(app)
    loss = next(spec for spec in chart_specs(app) if str(spec.get("title")).find("Loss") >= 0)
    assert loss["title"]["subtitle"] == ["▲ 1 point off the scale (126.4): drawn at the top edge"]
    y = loss["layer"][0]["encoding"]["y"]["scale"]
    assert y["clamp"] and y["domain"][1] < 5  # the train losses (about 2) fill the chart


def test_the_estimate_says_when_its_speed_came_from_a_run_outside_this_runs_folder(runs_dir, cpu_timed):
    record_speed("cpu", "CPU", 100.0, count(preset_spec("resnet20")).macs, "run bar-kill-2830")
    app = open_page("train", TINY)
    assert_clean(app)
    shown = texts(app.warning) + texts(app.info)
    assert "a run elsewhere on this machine (bar-kill-2830, not in this runs folder;" in shown
    assert "the speed of run bar-kill-2830" not in shown


def test_the_design_and_settings_survive_a_new_session_and_say_where_they_came_from(runs_dir, cache):
    fresh = open_page("train")  # nothing designed on this machine yet: the default, said loudly
    assert_clean(fresh)
    assert "This is the default design, resnet26-seed" in texts(fresh.warning)
    launch_line = next(c.value for c in fresh.caption if c.value.startswith("Launch trains"))
    assert f"**resnet26-seed** ({count(preset_spec('resnet26-seed')).params:,} parameters) for 30 epochs" in launch_line

    app = open_page("train", TINY)
    app.get_by_key("train:epochs").set_value(3).run()
    app.get_by_key("train:lr").set_value(0.02).run()
    again = open_page("train")  # a reload, or a new tab: a new session, no link
    assert_clean(again)
    assert again.session_state["design"] == TINY.to_dict()
    assert again.get_by_key("train:epochs").value == 3 and again.get_by_key("train:lr").value == 0.02
    assert any(c.value.startswith("This is your last design, restored as you left it at") for c in again.caption)
    # the default's warning is gone ("No GPU found" may show: the machine's probe ends when it ends)
    assert "default design" not in texts(again.warning)
    launch_line = next(c.value for c in again.caption if c.value.startswith("Launch trains"))
    assert f"**your own design** ({count(TINY).params:,} parameters) for 3 epochs" in launch_line
    assert again.query_params["stage"] == "1x8s2"  # the address bar links to it: a reload keeps it


def test_the_link_in_the_address_bar_wins_over_the_last_design(runs_dir, cache):
    open_page("train", TINY).get_by_key("train:epochs").set_value(4).run()  # the last design on disk: TINY
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params.update({"stage": ["2x32s1", "2x64s2"]})
    app.run()
    app.switch_page("pages/train.py").run()
    assert_clean(app)
    linked = ArchSpec.from_dict({"stages": [{"blocks": 2, "channels": 32, "stride": 1},
                                            {"blocks": 2, "channels": 64, "stride": 2}]})
    assert app.session_state["design"] == linked.to_dict()
    assert app.get_by_key("train:epochs").value == 4  # the settings last used come along


def test_an_imported_run_cannot_be_resumed_and_says_why(trained_copy):
    trained_copy.update_status(imported_from="/somewhere/seed.pt")
    (trained_copy.checkpoints / "last.json").unlink()
    app = open_page("train", TINY)
    assert_clean(app)
    resume = button(app, "Resume")
    assert resume.disabled and "imported from seed.pt, not trained here" in resume.help
    assert not any(b.label == "Train longer" for b in app.button)
    assert "Imported from seed.pt" in texts(app.info) and not app.get("progress")
    assert any(c.value.startswith("Can't resume: small was imported") for c in app.caption)


def test_the_runs_table_says_imported_and_leaves_unknown_cells_blank(trained_copy):
    trained_copy.update_status(imported_from="/somewhere/seed.pt", device=None)
    trained_copy.metrics_path.unlink()
    app = open_page("runs")
    assert_clean(app)
    table = app.dataframe[0].value.set_index("Run")
    assert table.loc["small", "Epochs"] == "2, imported"  # the epochs its status says it trained where it came from
    assert pd.isna(table.loc["small", "Training time"]) and pd.isna(table.loc["small", "Device"])
    assert app.dataframe[0].proto.placeholder == "—"  # how the browser shows them, not "None"
