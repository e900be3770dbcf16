"""What search leans on in Optuna (core/search/optuna_private.py, and the public behaviours core/search/study.py
builds on), and the Study handle: its storage opened once, a read that changes nothing, dead trials failed by
the one sweep that workers and explicit actions call.

If one of these fails after an Optuna upgrade, Optuna changed something search depends on: fix
core/search/optuna_private.py (or study.py) before widening the optuna range in requirements.txt.
"""
import os
import shutil
import socket
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

import core.search.study as study_module
from core.runs.run import create_run, process_start_time
from core.search import optuna_private
from core.search.report import study_status
from core.search.space import Space
from core.search.study import Study, away_reason, database_up_for, retry_of, start_study

TINY = {"budget": 20_000, "epochs": 1, "device": "cpu",
        "ranges": {"stages": 1, "blocks": 1, "width": 4, "growth": 1.0, "kernel_size": 3, "se_ratio": 0,
                   "dropout": 0.0, "lr": 0.2, "weight_decay": 5e-4, "batch_size": 128, "augment": [],
                   "label_smoothing": 0.0, "ema_decay": 0.0}}
LAPSE_S = 2.5  # past a grace of 1 s, as the storage measures it (whole seconds)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def quick_heartbeat(monkeypatch):
    """Storages opened from now on take a trial for dead after 1 s without a heartbeat, not 30 s."""
    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 1)


# ---- Optuna, as search uses it ---------------------------------------------------------------------------------

def test_the_storage_engine_is_where_optuna_private_finds_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    storage = optuna.storages.RDBStorage(url)
    engine = optuna_private.engine(storage)
    assert isinstance(engine, sqlalchemy.engine.Engine) and str(engine.url) == url
    with engine.connect() as connection:  # the very database the storage writes
        assert "trials" in sqlalchemy.inspect(connection).get_table_names()
    assert database_up_for(storage) == float("inf")  # a file is never away


def test_a_lapsed_heartbeat_is_failed_and_retried_with_its_number_attributes_and_reports(tmp_path):
    """fail_stale_trials fails a RUNNING trial whose heartbeat lapsed; RetryHeartbeatStaleTrialCallback queues a
    copy (its user attributes, with inherit_intermediate_values its reports) that names the original in
    retried_trial_number, also when the retry itself lapses; a trial that beats is left alone."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'r.db'}", heartbeat_interval=1, grace_period=1,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3, inherit_intermediate_values=True))
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    dead, live = study.ask(), study.ask()
    dead.set_user_attr("run", "s-000")
    dead.report(0.5, 1)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in (dead, live)]
    for trial_id in ids:
        storage.record_heartbeat(trial_id)
    time.sleep(LAPSE_S)
    storage.record_heartbeat(ids[1])
    optuna.storages.fail_stale_trials(study)

    first, beating, retry = study.get_trials()
    assert (first.state, beating.state, retry.state) == (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    assert retry_of(retry) == 0 and retry_of(first) is None and retry_of(beating) is None
    assert retry.user_attrs == {"run": "s-000"} and retry.intermediate_values == {1: 0.5}

    again = study.ask()  # the waiting retry is what the next ask gets
    assert again.number == retry.number
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, again.number))
    time.sleep(LAPSE_S)
    storage.record_heartbeat(ids[1])
    optuna.storages.fail_stale_trials(study)
    assert retry_of(study.get_trials()[-1]) == 0  # a retry's retry still names the first trial


def test_a_query_the_stopping_server_cut_off_reads_as_the_database_away():
    """PostgreSQL stopping mid-query (test_search.py's outage test met it): RDBStorage's get_trials falls back to a
    second query, which meets the session's pending rollback, and Optuna raises StorageInternalError from that.
    The database is away; the worker waits for it instead of ending with a traceback."""
    cut = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
    try:
        try:
            raise cut
        except sqlalchemy.exc.OperationalError:
            raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")  # noqa: B904
    except sqlalchemy.exc.PendingRollbackError as pending:  # the cut is its context, not its cause
        error = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        error.__cause__ = pending
    assert away_reason(error) == "server closed the connection unexpectedly"
    assert away_reason(optuna.exceptions.StorageInternalError("invalid data")) is None


# ---- the Study handle --------------------------------------------------------------------------------------

def test_a_study_is_one_object_and_its_storage_is_opened_once_per_process(runs_dir):
    study = start_study(Space.from_dict(TINY), "once", None, 1)
    assert study == Study("once") and study.url == f"sqlite:///{runs_dir / '.search' / 'once.db'}"  # as noted
    opened = study.storage
    assert Study("once").storage is opened
    shutil.move(runs_dir / ".search" / "once.db", runs_dir / "moved.db")  # moved away: a new file, opened afresh
    assert Study("once").storage is not opened


def test_reading_a_study_changes_nothing_and_the_sweep_fails_its_dead_trials(runs_dir, quick_heartbeat):
    """The page reads a study every 2 s: the read leaves a trial whose heartbeat lapsed as it is. The sweep
    (workers, Stop, `--status`) fails it and queues its retry; one whose run lives on this machine is kept."""
    study = start_study(Space.from_dict(TINY), "quiet", None, 2)
    dead, alive = study.optuna.ask(), study.optuna.ask()
    run = create_run(study.space.config(study.space.sample(alive)), "quiet-001")
    run.update_status(pid=os.getpid(), pid_start=process_start_time(os.getpid()), host=socket.gethostname())
    alive.set_user_attr("run", run.name)
    for trial in (dead, alive):
        study.beat_for(trial.number)
    time.sleep(LAPSE_S)

    before = study_status(study)
    assert [t.state for t in study.optuna.get_trials()] == [TrialState.RUNNING] * 2
    assert [r["state"] for r in before["trials"]] == ["running", "queued"]  # quiet-001: its run's own state

    study.fail_dead_trials()
    assert [t.state for t in study.optuna.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    after = study_status(study)
    assert [(r["state"], r["retry_of"], r["retried_as"]) for r in after["trials"]] == \
        [("retried", None, 2), ("queued", None, None), ("waiting", 0, None)]
    assert after["counted"] == 2  # the failure its retry replaced is not counted
