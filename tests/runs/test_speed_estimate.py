"""Issue 27, item 10: an estimate agrees with the run it cites. The design a run trained, at its batch and precision,
is given that run's measured images/s; any other design is an estimate that says so, scaled from the kept speed
nearest to it in cost. On a run the engine really trains, and on the shipped runs' measured speeds."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.design.budget import count
from core.design.config import RunConfig
from core.design.presets import preset_spec
from core.design.spec import ArchSpec
from core.runs.speeds import estimate, read_machine, record_run_speed, speed_basis, update_machine
from tests.helpers import QUICK_ARCH, ROOT


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A machine.json of the test's own, on which the probe found the CPU."""
    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
    update_machine(lambda machine: machine | {"devices": {"cpu": "CPU"}})
    return tmp_path / "cache"


def shipped(name: str) -> tuple[RunConfig, float]:
    """A shipped run's config and the speed its last epoch measured: what its training kept for estimates."""
    config = RunConfig.from_dict(json.loads((ROOT / "runs" / name / "config.json").read_text()))
    epochs = [json.loads(line) for line in (ROOT / "runs" / name / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    return config, epochs[-1]["images_per_s"]


def keep(config: RunConfig, images_per_s: float, run: str) -> None:
    """As the engine keeps a run's speed at the end of an epoch."""
    record_run_speed("cpu", "CPU", images_per_s, count(config.arch).macs, run, config)


def settings(config: RunConfig) -> dict:
    return config.train.to_dict()


def test_a_design_a_run_trained_is_given_that_runs_own_speed(cache, tmp_path):
    """A real run of a tiny design (smaller than the probe's reference, so its speed never becomes the device's):
    the Train page's figure for that design, batch and precision is the run's own, and cites it."""
    config = {"arch": QUICK_ARCH, "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "augment": []}}
    (tmp_path / "quick.json").write_text(json.dumps(config))
    trained = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(tmp_path / "quick.json"),
                              "--data", "builtin", "--device", "cpu", "--run-dir", str(tmp_path / "runs" / "quick")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    run_config = RunConfig.from_dict(json.loads((tmp_path / "runs" / "quick" / "config.json").read_text()))
    lines = [json.loads(line) for line in (tmp_path / "runs" / "quick" / "metrics.jsonl").read_text().splitlines()]
    measured = [line for line in lines if line["kind"] == "epoch"][-1]["images_per_s"]

    figure = estimate(ArchSpec.from_dict(QUICK_ARCH), "cpu", "builtin", settings(run_config))
    assert figure is not None and figure.measured and figure.source == "run quick"
    assert figure.images_per_s == measured  # exactly what the run measured, not a scaling of it
    assert speed_basis(figure, count(run_config.arch).macs, "the speed of run quick").startswith("Measured: ")
    assert "speeds" not in read_machine()  # a tiny run still does not speak for the device's other designs

    other_batch = settings(run_config) | {"batch_size": 32}
    guess = estimate(ArchSpec.from_dict(QUICK_ARCH), "cpu", "builtin", other_batch)
    assert not guess.measured and guess.same_design and guess.source == "run quick"  # an estimate, and says so
    assert speed_basis(guess, count(run_config.arch).macs, "the speed of run quick").startswith("An estimate from ")


def test_the_shipped_runs_are_given_their_own_speeds_and_not_each_others(cache):
    example, example_speed = shipped("example")
    laptop, laptop_speed = shipped("laptop")
    keep(example, example_speed, "example")
    keep(laptop, laptop_speed, "laptop")  # the latest, and the device's figure
    for config, speed, name in ((example, example_speed, "example"), (laptop, laptop_speed, "laptop")):
        figure = estimate(config.arch, "cpu", "builtin", settings(config))
        assert figure.measured and figure.source == f"run {name}" and figure.images_per_s == speed


def test_a_design_between_two_runs_is_estimated_from_their_memory_traffic_not_their_macs_alone(cache):
    """runs/example (resnet20) and the first shipped laptop run (today's laptop-onecycle) measured 458 and 610
    images/s on this project's 2-core Xeon. With speeds scaled by MACs from the latest run alone, resnet20 read 671
    images/s "from run laptop", 46% faster than the resnet20 run measured: resnet20 has fewer MACs than laptop but
    five times its feature-map traffic."""
    example, example_speed = shipped("example")
    laptop, laptop_speed = RunConfig.from_preset("laptop-onecycle"), 610.0  # as that run's last epoch measured
    keep(example, example_speed, "example")
    keep(laptop, laptop_speed, "laptop")
    # another design: an estimate from the kept run nearest in cost, by MACs and the memory traffic the two
    # runs show, never a figure that takes laptop's speed for resnet20's
    wide = preset_spec("resnet10-wide")
    guess = estimate(wide, "cpu", "builtin", settings(example))
    assert not guess.measured and guess.source in ("run example", "run laptop") and guess.by_traffic
    assert "and its memory traffic: " in speed_basis(guess, count(wide).macs, "the speed of run laptop")
    by_macs = laptop_speed * count(laptop.arch).macs / count(wide).macs
    assert guess.images_per_s != pytest.approx(by_macs, rel=0.05)  # the model is not MACs alone any more
    assert 0 < guess.images_per_s < min(example_speed, laptop_speed)  # 6x laptop's MACs: slower than both


def test_a_small_design_is_estimated_from_a_small_run_not_scaled_from_a_large_one(cache):
    """A tiny network uses the device far worse than its MACs say: scaled from a laptop-sized run by MACs, a
    design of 0.5M MACs read 84 times laptop's speed. The nearest kept design speaks for it instead."""
    laptop = RunConfig.from_preset("laptop-onecycle")
    keep(laptop, 1867.0, "laptop-10min")
    quick = RunConfig.from_dict({"arch": QUICK_ARCH, "train": {"batch_size": 128}})
    keep(quick, 3000.0, "quick")
    near = ArchSpec.from_dict(QUICK_ARCH | {"stem": {"channels": 12}})  # a little more than quick
    guess = estimate(near, "cpu", "builtin", settings(quick))
    assert not guess.measured and guess.source == "run quick" and guess.source_macs == count(quick.arch).macs
    assert 1000 < guess.images_per_s < 3000  # a little slower than quick, not tens of thousands
    # quick's 0.3 ms an image is more than its MACs and traffic explain beside laptop's: no traffic weight fits
    # those two, so the scaling is by MACs, and says so
    assert not guess.by_traffic and speed_basis(guess, count(near).macs, "the speed of run quick").endswith(
        "scaled to this one's 725 k: the first run of this design on this device gives its own.")
    assert estimate(quick.arch, "cpu", "builtin", settings(quick)).images_per_s == 3000.0


def test_a_run_of_another_device_is_not_taken_for_this_ones(cache):
    quick = RunConfig.from_dict({"arch": QUICK_ARCH})
    record_run_speed("cpu", "Another CPU", 3000.0, count(quick.arch).macs, "elsewhere", quick)
    assert estimate(quick.arch, "cpu", "builtin", settings(quick)) is None


def test_kept_run_speeds_of_the_wrong_shape_are_not_used(cache, capsys):
    from core.runs.speeds import machine_path

    quick = RunConfig.from_dict({"arch": QUICK_ARCH})
    keep(quick, 3000.0, "quick")
    machine = json.loads(machine_path().read_text())
    machine["runs"]["cpu"].append({"run": 3, "images_per_s": "fast"})
    machine["runs"]["cuda:0"] = "not a list"
    machine_path().write_text(json.dumps(machine))
    assert read_machine()["runs"] == {"cpu": machine["runs"]["cpu"][:1]}
    assert estimate(quick.arch, "cpu", "builtin", settings(quick)).images_per_s == 3000.0
    assert "parts of it are of the wrong shape" in capsys.readouterr().err


def test_the_train_page_says_measured_for_the_runs_own_design_and_estimate_for_another_batch(cache, tmp_path,
                                                                                              monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    design = preset_spec("resnet20")
    app = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    app.session_state["design_draft"] = app.session_state["design"] = design.to_dict()
    app.session_state["design_preset"] = "resnet20"
    app.switch_page("pages/train.py").run()
    batch, precision = app.session_state["train:batch_size"], app.session_state["train:precision"]
    keep(RunConfig.from_dict({"arch": design.to_dict(), "train": {"batch_size": batch, "precision": precision}}),
         458.0, "example")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    shown = "\n".join(e.value for e in [*app.warning, *app.info])
    assert "(458 images/s)" in shown and "Measured: the speed of a run elsewhere on this machine (example" in shown
    assert "which trained this design at this batch and precision" in shown

    app.number_input(key="train:batch_size").set_value(batch // 2).run()
    shown = "\n".join(e.value for e in [*app.warning, *app.info])
    assert "An estimate from the speed of a run elsewhere on this machine (example" in shown
    assert "which trained this design at another batch or precision" in shown
