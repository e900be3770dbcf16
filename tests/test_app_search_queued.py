"""Issue 27, item 13: "Trials 3 of 3" read while trial 2 was queued. A real study whose trial's run waits in the run
queue behind another run on the CPU: the Search page counts it as queued, not as done."""
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from streamlit.testing.v1 import AppTest

from core.design.config import RunConfig
from core.runs.run import Run, create_run, delete, launch, stop
from core.search.report import study_status
from core.search.space import Space
from core.search.study import list_studies, start_study, worker_alive
from core.search.worker import detach, request_stop
from conftest import QUICK_ARCH, wait_for

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    for name in list_studies():
        if worker_alive(name):
            request_stop(name)
            wait_for(lambda name=name: not worker_alive(name), 120, f"study {name}'s worker to stop")


def tiny_space() -> Space:
    ranges = {"stages": 1, "blocks": 1, "width": 4, "growth": 1.0, "kernel_size": 3, "se_ratio": 0, "dropout": 0.0,
              "lr": 0.2, "weight_decay": 5e-4, "batch_size": 128, "augment": [], "label_smoothing": 0.0,
              "ema_decay": 0.0}
    return Space.from_dict({"epochs": 1, "device": "cpu", "budget": 20_000, "ranges": ranges})


def ended(run: Run) -> bool:
    return run.status()["state"] not in ("queued", "running")


def test_a_trial_queued_behind_another_run_is_not_counted_as_done(runs_dir):
    holder = create_run(RunConfig.from_dict({"arch": QUICK_ARCH, "train": {"epochs": 500}}), "holder")
    launch(holder, device="cpu", data="builtin")
    trial_run = None
    try:
        wait_for(lambda: holder.status()["state"] == "running", 120, "the holding run to take the CPU")
        url = start_study(tiny_space(), "behind", None, 2)
        detach("behind", url, 2, "cpu")

        def queued_trial() -> bool:
            rows = study_status("behind")["trials"]
            return bool(rows) and rows[0]["state"] == "queued"
        wait_for(queued_trial, 180, "the study's first trial to wait in the run queue")
        trial_run = Run.named(study_status("behind")["trials"][0]["run"])
        assert trial_run.status()["state"] == "queued" and holder.status()["state"] == "running"

        app = AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/search.py").run()
        assert not app.exception, [e.value for e in app.exception]
        (trials,) = [m for m in app.metric if m.label == "Trials done"]
        assert trials.value == "0 of 2" and trials.proto.delta == "1 queued"
        assert [(m.label, m.value) for m in app.metric][1:3] == [("Finished", "0"), ("Pruned", "0")]
    finally:
        request_stop("behind")
        stop(holder)
        for run in (holder, trial_run):
            if run is not None:
                wait_for(lambda run=run: ended(run), 120, f"{run.name} to end")
        delete(holder)


def test_a_failed_trial_queued_again_by_optuna_is_not_counted_as_done(runs_dir):
    """A trial whose process died is failed and queued again by Optuna (RetryHeartbeatStaleTrialCallback, as a
    worker's fail_stale_trials does): its retry waits in the study's queue, and is not done either."""
    url = start_study(tiny_space(), "again", None, 2)
    study = optuna.load_study(study_name="again", storage=url)
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.get_trials()[0])
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    status = study_status("again")
    assert status["in_flight"] == {"running": 0, "queued": 1}

    app = AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/search.py").run()
    assert not app.exception, [e.value for e in app.exception]
    (trials,) = [m for m in app.metric if m.label == "Trials done"]
    assert trials.value == "0 of 2" and trials.proto.delta == "1 queued"
