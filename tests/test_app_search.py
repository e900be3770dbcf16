"""The Search page under Streamlit's AppTest, on a runs folder of the test's own: a space is defined with the
page's controls, launched as a real background study, and its trials, chart and best design show up."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runs.run import Run, stop
from core.search.report import study_status
from core.search.space import Space
from core.search.study import list_studies, start_study, worker_alive
from core.search.worker import request_stop

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """A runs folder of the test's own; a study still searching at the end is stopped."""
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    for name in list_studies():
        if worker_alive(name):
            request_stop(name)
            deadline = time.monotonic() + 60
            while worker_alive(name) and time.monotonic() < deadline:
                time.sleep(0.5)


def open_search() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/search.py").run()


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]


def define_a_tiny_space(app: AppTest) -> AppTest:
    """One stage of one block, 4 to 8 channels, one epoch, one trial: the smallest study there is."""
    app.slider(key="search:stages").set_range(1, 1)
    app.slider(key="search:blocks").set_range(1, 1)
    app.slider(key="search:width").set_range(4, 8)
    app.number_input(key="search:epochs").set_value(1)
    app.number_input(key="search:trials").set_value(1)
    app.text_input(key="search:name").input("page")
    return app.run()


def test_the_page_opens_with_the_presets_span_and_no_study(runs_dir):
    app = open_search()
    assert_clean(app)
    assert app.title[0].value == "Search"
    assert app.slider(key="search:stages").value == (3, 4)  # what the presets span
    assert any("No studies yet" in info.value for info in app.info)


def test_a_space_over_budget_is_refused_before_launch(runs_dir):
    app = open_search()
    app.slider(key="search:width").set_range(200, 256)
    app.number_input(key="search:budget").set_value(100_000)
    app.run()
    assert_clean(app)
    assert app.error[0].value.startswith("space.budget: even the smallest design of this space has")
    assert next(b for b in app.button if b.label == "Launch the study").disabled


def test_a_study_launched_from_the_page_fills_the_table_and_opens_its_best_design(runs_dir):
    app = define_a_tiny_space(open_search())
    assert_clean(app)
    next(b for b in app.button if b.label == "Launch the study").click().run()
    assert_clean(app)
    assert list_studies() == ["page"]

    deadline = time.monotonic() + 300
    while study_status("page")["worker_alive"] and time.monotonic() < deadline:
        time.sleep(1)
    study = study_status("page")
    assert study["counted"] == 1 and not study["worker_alive"], study
    app.run()
    assert_clean(app)
    table = app.dataframe[0].value
    assert list(table["Trial"]) == [t["number"] for t in study["trials"]]
    assert list(table["State"]) == ["finished"] and list(table["Run"]) == ["page-000"]
    assert app.metric[0].value == "1 of 1"
    assert app.subheader[0].value.startswith(f"Best: trial {study['best']['number']}")

    next(b for b in app.button if b.label == "Open in Design").click().run()
    assert_clean(app)
    best_run = Run.named(study["best"]["run"])
    assert app.session_state["design"] == best_run.config().arch.to_dict()


def test_train_it_in_full_launches_the_best_design_on_all_of_train(runs_dir):
    """The best trial's design and recipe, for the epochs asked, with no validation split (it scores on test)."""
    space = Space.from_dict({"epochs": 1, "device": "cpu", "ranges": {
        "stages": 1, "blocks": 1, "width": 4, "growth": 1.0, "kernel_size": 3, "se_ratio": 0, "dropout": 0.0,
        "lr": 0.2, "weight_decay": 5e-4, "batch_size": 128, "augment": [], "label_smoothing": 0.0,
        "ema_decay": 0.0}})
    start_study(space, "one", None, 1)
    worker = subprocess.run([sys.executable, "-m", "core", "search", "--study", "one", "--trials", "1"],
                            cwd=APP.parent, capture_output=True, text=True, timeout=300)
    assert json.loads(worker.stdout)["best"]["run"] == "one-000", worker.stderr
    app = open_search()
    app.number_input(key="search_full_epochs").set_value(2)
    next(b for b in app.button if b.label == "Train it in full").click().run(timeout=300)  # opens Train: torch
    full = [run for run in runs_dir.iterdir() if run.name.startswith("one-000-full")]
    assert len(full) == 1
    run = Run(full[0])
    try:
        cfg = run.config()
        assert cfg.arch == Run.named("one-000").config().arch
        assert cfg.train.epochs == 2 and cfg.train.val_fraction == 0.0
        assert app.session_state["train_followed"] == run.name
    finally:
        stop(run)
        deadline = time.monotonic() + 120
        while run.status()["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
