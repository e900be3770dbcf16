"""The Search page under Streamlit's AppTest, on a runs folder of the test's own: a space is defined with the
page's controls, launched as a real background study, and its trials, chart and best design show up."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow as pa
import pytest
from optuna.trial import TrialState
from streamlit.testing.v1 import AppTest

from core.design.config import RunConfig
from core.runs.run import Run, create_run, delete, launch, stop
from core.search.report import study_status
from core.search.space import TOLERATED_OVER, Space
from core.search.study import Study, list_studies, record_path, start_study, worker_alive
from core.search.worker import detach, request_stop
from tests.helpers import APP, QUICK_ARCH, assert_clean, wait_for


@pytest.fixture
def runs_dir(runs_dir) -> Path:
    """conftest's runs folder of the test's own; a study still searching at the end is stopped."""
    yield runs_dir
    for name in list_studies():
        if worker_alive(name):
            request_stop(Study(name))
            deadline = time.monotonic() + 60
            while worker_alive(name) and time.monotonic() < deadline:
                time.sleep(0.5)


def open_search() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/search.py").run()


def define_a_tiny_space(app: AppTest) -> AppTest:
    """One stage of one block, 4 to 8 channels, one epoch, one trial: the smallest study there is."""
    app.slider(key="search:stages").set_range(1, 1)
    app.slider(key="search:blocks").set_range(1, 1)
    app.slider(key="search:width").set_range(4, 8)
    app.number_input(key="search:epochs").set_value(1)
    app.number_input(key="search:trials").set_value(1)
    app.text_input(key="search:name").input("page")
    return app.run()


def search_until_done(name: str) -> dict:
    """`python -m core search --study NAME --trials 1` in a real process, to its end; the study's status."""
    worker = subprocess.run([sys.executable, "-m", "core", "search", "--study", name, "--trials", "1"], cwd=APP.parent,
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    return json.loads(worker.stdout)


def fixed_space(**changes) -> Space:
    """One tiny design and one recipe: a study of it trains in seconds."""
    ranges = {"stages": 1, "blocks": 1, "width": 4, "growth": 1.0, "kernel_size": 3, "se_ratio": 0, "dropout": 0.0,
              "lr": 0.2, "weight_decay": 5e-4, "batch_size": 128, "augment": [], "label_smoothing": 0.0,
              "ema_decay": 0.0}
    return Space.from_dict({"epochs": 1, "device": "cpu", "budget": 20_000, "ranges": ranges | changes})


RECIPE = {"lr": 0.125, "batch_size": 64, "augment": ["crop", "flip", "autoaugment"]}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A runs folder holding study `done`, searched to its end by a real worker: trial 0 a design over the budget
    (never trained), trial 1 a tiny design with RECIPE, finished. Tests read it (`in_searched`); a run one adds
    is deleted at its end."""
    runs = tmp_path_factory.mktemp("searched") / "runs"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RESNET_STUDIO_RUNS", str(runs))
        space = fixed_space(width={"choices": [4, 64]}, **RECIPE)
        study = optuna.load_study(study_name="done", storage=start_study(space, "done", None, 1).url)
        study.enqueue_trial({"width": 64})  # 76,490 parameters: over 20,000
        study.enqueue_trial({"width": 4})
        status = search_until_done("done")
    assert [r["state"] for r in status["trials"]] == ["rejected", "finished"], status
    assert status["best"]["number"] == 1 and status["best"]["run"] == "done-001"
    return runs


@pytest.fixture
def in_searched(searched, monkeypatch) -> Path:
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(searched))
    return searched


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
    assert app.error[0].value.startswith("**Parameter budget**: even the smallest design of this space has")
    assert "lower **First stage's width (channels)**, **Blocks per stage** or **Stages**" in app.error[0].value
    assert next(b for b in app.button if b.label == "Launch the study").disabled


def test_a_study_launched_from_the_page_fills_the_table_and_opens_its_best_design(runs_dir):
    app = define_a_tiny_space(open_search())
    assert_clean(app)
    next(b for b in app.button if b.label == "Launch the study").click().run()
    assert_clean(app)
    assert list_studies() == ["page"]

    deadline = time.monotonic() + 300
    while study_status(Study("page"))["worker_alive"] and time.monotonic() < deadline:
        time.sleep(1)
    study = study_status(Study("page"))
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


def test_train_it_in_full_launches_the_best_design_and_recipe_on_all_of_train(in_searched):
    """The best trial's design and recipe, for the epochs asked, with no validation split (it scores on test)."""
    best = Run.named("done-001").config()
    app = open_search()
    app.number_input(key="search_full_epochs").set_value(2)
    next(b for b in app.button if b.label == "Train it in full").click().run(timeout=300)  # opens Train: torch
    full = [run for run in in_searched.iterdir() if run.name.startswith("done-001-full")]
    assert len(full) == 1
    run = Run(full[0])
    try:
        cfg = run.config()
        assert cfg.arch == best.arch and (cfg.train.lr, cfg.train.batch_size) == (RECIPE["lr"], RECIPE["batch_size"])
        assert cfg.train.epochs == 2 and cfg.train.val_fraction == 0.0 and best.train.val_fraction > 0
        assert app.session_state["train_followed"] == run.name
    finally:
        stop(run)
        deadline = time.monotonic() + 120
        while run.status()["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        delete(run)  # the module's study folder as it was


def chart_rows(app: AppTest, title: str) -> list[dict]:
    """The rows of every dataset of the page's Altair chart whose spec names `title`."""
    chart = next(e for e in app.get("vega_lite_chart") if title in e.proto.spec)
    return [row for data in chart.proto.datasets for row in pa.ipc.open_stream(data.data.data).read_all().to_pylist()]


def test_the_page_says_before_launch_how_much_of_the_space_is_over_budget_and_which_widths_fit(runs_dir):
    app = open_search()
    assert_clean(app)
    warning = app.warning[0].value
    share = int(re.search(r"About (\d+)% of this space's designs are over the budget of 5,000,000", warning)[1])
    assert share > 100 * TOLERATED_OVER and "the largest has" in warning
    use = next(b for b in app.button if b.label.startswith("Use widths"))
    low, high = map(int, re.findall(r"\d+", use.label))
    use.click().run()
    assert_clean(app)
    assert app.slider(key="search:width").value == (low, high) and not app.warning
    assert any(re.match(r":material/check_circle: \d+% of this space's designs are over", c.value) for c in app.caption)

    app.number_input(key="search:budget").set_value(100_000).run()  # the budget of issue 19: 9 of 12 were over
    assert "Even at the narrowest first-stage width" in app.warning[0].value
    assert not [b for b in app.button if b.label.startswith("Use widths")]
    assert not next(b for b in app.button if b.label == "Launch the study").disabled  # a warning, not a refusal


def test_rejected_designs_are_listed_apart_never_plotted_at_zero_and_the_count_matches_the_table(in_searched):
    """One design over the budget, then one that trains: the table holds the one trial the count counts, with
    its epochs; the rejected design is listed under "Not counted" and is not a point of the chart."""
    app = open_search()
    assert_clean(app)
    assert app.metric[0].value == "1 of 1"
    table = app.dataframe[0].value
    assert list(table["Trial"]) == [1] and list(table["State"]) == ["finished"] and list(table["Epochs"]) == ["1 of 1"]
    assert not table.astype(str).isin(["None", "nan"]).any().any()
    assert app.expander[1].label == "Not counted: 1 design over the budget, never trained"
    apart = app.dataframe[1].value
    assert list(apart["Trial"]) == [0] and apart["Why"][0] == "over the limit: 76,490 parameters (budget 20,000)"
    points = [row for row in chart_rows(app, "Parameters (log scale)") if "Trial" in row]
    assert [p["Trial"] for p in points] == [1] and points[0]["Val accuracy"] > 0


def test_open_in_design_brings_the_trials_recipe_to_train(in_searched):
    """Issue 19: with resnet20's settings loaded in Train before, Open in Design then Train started from
    resnet20's recipe (lr 0.2, batch 256). Train now starts from the trial's: lr 0.125, batch 64, AutoAugment,
    for the full training's epochs, on all of train."""
    recipe = RECIPE
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/design.py").run()
    app.selectbox(key="design:preset").select("resnet20").run()
    app.switch_page("pages/train.py").run()
    assert app.session_state["train:lr"] == 0.2 and app.session_state["train:batch_size"] == 256
    app.switch_page("pages/search.py").run()
    next(b for b in app.button if b.label == "Open in Design").click().run()
    assert_clean(app)
    assert any("From **trial 1 of done**" in m.value for m in app.markdown)
    app.switch_page("pages/train.py").run()
    assert_clean(app)
    settings = {name: app.session_state[f"train:{name}"] for name in ("lr", "batch_size", "augment", "epochs",
                                                                     "val_fraction", "schedule")}
    assert settings == recipe | {"epochs": 30, "val_fraction": 0.0, "schedule": "onecycle"}  # resnet20's schedule
    assert any("the recipe of trial 1 of done" in c.value for c in app.caption)


def test_a_new_tab_trains_the_trials_design_with_the_trials_settings_and_says_so(in_searched):
    """Issue 27, item 3: Open in Design after the laptop preset's settings, then Train in a new tab (a new
    session, with the design's link or with none): the trial's design came with laptop's settings, captioned
    "laptop preset's recipe", or with the trial's captioned "the defaults". The recipe travels with the design."""
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.selectbox(key="design:preset").select("laptop").run()
    app.switch_page("pages/train.py").run()
    assert app.session_state["train:time_limit"] == 1800  # laptop's recipe: a half-hour budget
    app.switch_page("pages/search.py").run()
    next(b for b in app.button if b.label == "Open in Design").click().run()
    app.switch_page("pages/design.py").run()
    assert_clean(app)
    trial, link = app.session_state["design"], {key: app.query_params[key] for key in app.query_params}
    for query in (link, {}):  # the new tab opened with the link of the design, or with none (a nav link)
        tab = AppTest.from_file(APP, default_timeout=300)
        tab.query_params.update(query)
        tab.run().switch_page("pages/train.py").run()
        assert_clean(tab)
        assert tab.session_state["design"] == trial
        settings = {name: tab.session_state[f"train:{name}"] for name in ("lr", "batch_size", "augment")}
        assert settings == RECIPE and tab.session_state["train:time_limit"] == 0
        assert any("They start from the recipe of trial 1 of done." in c.value for c in tab.caption), \
            [c.value for c in tab.caption]


def test_a_study_whose_database_is_down_does_not_take_the_page_down(runs_dir, postgres):
    """The newest study lives in a PostgreSQL that is down: the page opens, says so in that study's place, and
    the other study is one pick away; when the database is back, the study shows again."""
    start_study(fixed_space(), "local", None, 1)
    start_study(fixed_space(), "shared", postgres.url, 1)
    os.utime(record_path("local"), (time.time() - 60, time.time() - 60))  # "shared" is the newest
    postgres.stop()
    try:
        app = open_search()
        assert_clean(app)
        assert app.selectbox(key="search_study").value == "shared"
        assert app.error[0].value.startswith(f"Study **shared**: database unreachable at {postgres.url}: ")
        assert "Connection refused" in app.error[0].value
        app.selectbox(key="search_study").select("local").run()
        assert_clean(app)
        assert app.metric[0].value == "0 of 1" and not app.error
    finally:
        postgres.start()
    app.selectbox(key="search_study").select("shared").run()
    assert_clean(app)
    assert app.metric[0].value == "0 of 1" and not app.error


def test_the_study_reads_as_people_read_it(in_searched):
    """Issue 27: the count said "3 of 3" with a trial still queued, the settings sat in one column cut off, the
    caption promised a dotted Pareto line the chart did not draw, the budget read 5000000 and the data was free
    text."""
    app = open_search()
    assert_clean(app)
    assert [(m.label, m.value) for m in app.metric][0] == ("Trials done", "1 of 1")
    assert any(c.value == "5,000,000 parameters" for c in app.caption)
    table = app.dataframe[0].value
    assert "Settings" not in table and table["Width"][0] == "4"  # the setting the study chose, a column of its own
    front = [layer for layer in json.loads(next(c for c in app.get("vega_lite_chart") if "Val accuracy" in
                                                 c.proto.spec).proto.spec)["layer"]
             if layer.get("mark", {}).get("type") == "point" and layer["mark"].get("size") == 260]
    assert front  # the front's trials are ringed: one trial is a front with no line to draw
    assert any(c.value.startswith("The ringed trial is the Pareto front so far") for c in app.caption)
    assert app.segmented_control(key="search:data_choice").value == "builtin"
    app.segmented_control(key="search:data_choice").set_value("path").run()
    assert app.text_input(key="search:data").value == ""  # a copy on this machine, as Train asks for it


def test_trials_in_flight_are_not_counted_as_done(runs_dir):
    """Issue 27: "Trials 3 of 3" read while trial 2 was still queued."""
    study = optuna.load_study(study_name="live", storage=start_study(fixed_space(), "live", None, 2).url)
    study.ask()  # a trial begun, its run not yet trained: in flight, counted toward the 2 but not done
    app = open_search()
    assert_clean(app)
    (trials,) = [m for m in app.metric if m.label == "Trials done"]
    assert trials.value == "0 of 2" and trials.proto.delta == "1 running"


def test_a_trial_queued_behind_another_run_is_not_counted_as_done(runs_dir):
    """Issue 27, item 13, with a trial that is truly queued: its run waits in the run queue behind another run on
    the CPU."""
    holder = create_run(RunConfig.from_dict({"arch": QUICK_ARCH, "train": {"epochs": 500}}), "holder")
    launch(holder, device="cpu", data="builtin")
    trial_run = None
    try:
        wait_for(lambda: holder.status()["state"] == "running", 120, "the holding run to take the CPU")
        study = start_study(fixed_space(), "behind", None, 2)
        detach(study, 2, "cpu")

        def queued_trial() -> bool:
            rows = study_status(study)["trials"]
            return bool(rows) and rows[0]["state"] == "queued"
        wait_for(queued_trial, 180, "the study's first trial to wait in the run queue")
        trial_run = Run.named(study_status(study)["trials"][0]["run"])
        assert trial_run.status()["state"] == "queued" and holder.status()["state"] == "running"

        app = open_search()
        assert_clean(app)
        (trials,) = [m for m in app.metric if m.label == "Trials done"]
        assert trials.value == "0 of 2" and trials.proto.delta == "1 queued"
        assert [(m.label, m.value) for m in app.metric][1:3] == [("Finished", "0"), ("Pruned", "0")]
    finally:
        request_stop(Study("behind"))
        stop(holder)
        for run in (holder, trial_run):
            if run is not None:
                wait_for(lambda run=run: run.status()["state"] not in ("queued", "running"), 120,
                         f"{run.name} to end")
        delete(holder)


def test_a_failed_trial_queued_again_by_optuna_is_not_counted_as_done(runs_dir):
    """A trial whose process died is failed and queued again by Optuna (RetryHeartbeatStaleTrialCallback, as a
    worker's fail_stale_trials does): its retry waits in the study's queue, and is not done either."""
    handle = start_study(fixed_space(), "again", None, 2)
    study = optuna.load_study(study_name="again", storage=handle.url)
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.get_trials()[0])
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    status = study_status(handle)
    assert status["in_flight"] == {"running": 0, "queued": 1}

    app = open_search()
    assert_clean(app)
    (trials,) = [m for m in app.metric if m.label == "Trials done"]
    assert trials.value == "0 of 2" and trials.proto.delta == "1 queued"
