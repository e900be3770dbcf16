"""Search (core/search/): real studies of real trials, each a training process on the built-in slice.

Tiny nets and one or two epochs keep them short. The storage is the default SQLite file, and for the
tests of several workers and of a database outage also a real PostgreSQL server that the `postgres` fixture
(conftest) starts itself (Debian's `postgresql` package; `make test` installs it where apt-get can run).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import ROOT, core_cli, core_main, free_port, wait_for
from core.design.budget import count
from core.design.config import TrainConfig
from core.design.presets import PRESETS, preset_spec
from core.design.spec import SpecError
from core.files import read_json
from core.processes import process_alive
from core.runs.run import Run, list_runs
from core.search.report import study_status
from core.search.space import TOLERATED_OVER, Space, budget_share
from core.search.study import GRACE_S, HEARTBEAT_S, Study, continue_study, counted, start_study
from core.search.worker import Worker, request_stop

BUDGET = 20_000  # width 4 or 8: 470 or 1,506 parameters (a trial's epoch in seconds); width 64: 76,490, over
TINY = {"budget": BUDGET, "epochs": 1, "startup_trials": 1, "device": "cpu",
        "ranges": {"stages": 1, "blocks": 1, "width": {"choices": [4, 8, 64]}, "growth": 1.0, "kernel_size": 3,
                   "se_ratio": 0, "dropout": 0.0, "lr": {"low": 1e-6, "high": 0.4, "log": True},
                   "weight_decay": 5e-4, "batch_size": 128, "augment": {"choices": [[]]}, "label_smoothing": 0.0,
                   "ema_decay": 0.0}}


def worker(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "core", "search", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=f)


def trained_runs() -> list[Run]:
    return [run for run in list_runs() if run.summary()["search"]]


# ---- the space ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"ranges": {"width": {"low": 2, "high": 64}}}, "space.ranges.width.low: 2 is out of range"),
    ({"ranges": {"lr": {"low": 0.1, "high": 50}}}, "space.ranges.lr.high: 50 is out of range"),
    ({"ranges": {"lr": {"low": 0.4, "high": 0.1}}}, "space.ranges.lr: low (0.4) is above high (0.1)"),
    ({"ranges": {"kernel_size": {"low": 3, "high": 5}}}, "space.ranges.kernel_size: kernel_size takes"),
    ({"ranges": {"augment": {"choices": [["crop", "blur"]]}}}, "space.ranges.augment.choices[0]: 'blur'"),
    ({"ranges": {"depth": 3}}, "space.ranges: unknown key 'depth'"),
    ({"objectives": ["params"]}, "space.objectives: expected a list starting with \"accuracy\""),
    ({"objectives": ["accuracy", "macs"]}, "space.pruner: Optuna's pruners need a single objective"),
    ({"val_fraction": 0}, "space.val_fraction: 0 is out of range"),
    ({"budget": 400}, "space.budget: even the smallest design of this space has 470 parameters"),
    ({"recipe": "resnet99"}, "space.recipe: unknown preset 'resnet99'"),
])
def test_a_bad_space_is_refused_with_the_field_named(change, message):
    with pytest.raises(SpecError, match="^" + re.escape(message)):
        Space.from_dict(TINY | change)


def test_the_default_space_spans_the_presets_and_holds_resnet20():
    space = Space.from_dict({})
    assert space.ranges["stages"] == {"low": 3, "high": 4, "log": False}  # the presets have 3 or 4 stages
    assert space.ranges["batch_size"] == {"choices": sorted({TrainConfig.from_dict(p["train"]).batch_size
                                                            for p in PRESETS.values()})}
    resnet20 = space.design({"stages": 3, "blocks": 3, "width": 16, "growth": 2.0, "kernel_size": 3, "se_ratio": 0,
                             "dropout": 0.0})
    assert resnet20 == preset_spec("resnet20")


@pytest.mark.parametrize("name, default, choices, built, bad", [
    ("whiten", False, [False, True], lambda design: {design.stem.whiten}, "yes"),
    ("downsample", "stride", ["stride", "maxpool"], lambda design: {s.downsample for s in design.stages},
     {"low": "stride", "high": "maxpool"}),
    ("activation", "relu", ["relu", "gelu"], lambda design: {design.activation}, "tanh"),
    ("pooling", "avg", ["avg", "max"], lambda design: {design.pooling}, {"low": "avg", "high": "max"}),
    ("logit_scale", 1.0, [1.0, 0.125], lambda design: {design.logit_scale}, 0.0),
])
def test_a_design_choice_off_the_presets_is_searched_only_when_the_space_asks_for_it(name, default, choices, built,
                                                                                      bad):
    assert Space.from_dict({}).ranges[name] == default  # the presets' spaces are as before
    space = Space.from_dict({"ranges": {"stages": 3, name: {"choices": choices}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        design = space.design(space.sample(trial))
        assert built(design) == {trial.params[name]}  # every block of the design has what was drawn
        seen.add(trial.params[name])
        study.tell(trial, 0.0)
    assert seen == set(choices)
    with pytest.raises(SpecError, match=f"space.ranges.{name}"):
        Space.from_dict({"ranges": {name: bad}})


def optuna_share_over(space: Space, draws: int = 400) -> float:
    """The share over the budget among designs drawn by Optuna's RandomSampler (TPE's first trials)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    over = 0
    for _ in range(draws):
        trial = study.ask()
        over += count(space.design(space.sample(trial))).params > space.budget
        study.tell(trial, 0.0)
    return over / draws


def test_the_share_of_a_space_over_budget_and_the_widths_that_fit_are_what_optuna_draws():
    """The defaults span the presets, and 3 to 4 stages of up to 4 blocks at widths up to 138 growing 2.5x a stage
    reach far past 5M parameters: the page says so before launch, and its suggested widths keep nearly all
    designs within the budget, as Optuna's own random draws (TPE's start-up trials) confirm."""
    space = Space.from_dict({})
    share = budget_share(space)
    assert 0.25 < share.over < 0.6 and abs(share.over - optuna_share_over(space)) < 0.08
    assert share.largest > 10 * space.budget
    low, high = share.width
    assert low == space.ranges["width"]["low"] < high < space.ranges["width"]["high"]
    narrowed = Space.from_dict(space.to_dict() | {"ranges": space.ranges | {"width": {"low": low, "high": high,
                                                                                       "log": True}}})
    assert share.width_over <= TOLERATED_OVER and optuna_share_over(narrowed) <= TOLERATED_OVER + 0.05
    small = Space.from_dict({"budget": 100_000})  # even 4 channels are too many for 4 stages of 4 blocks
    assert budget_share(small).width is None and budget_share(small).width_over > TOLERATED_OVER
    assert budget_share(Space.from_dict(TINY | {"ranges": TINY["ranges"] | {"width": 8}})).over == 0


def test_the_cli_refuses_a_bad_space_without_a_traceback(tmp_path, runs_dir):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(TINY | {"ranges": {"width": {"low": 8}}}))
    result = core_main("search", "--space", str(bad), "--trials", "1", "--study", "bad", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: space.ranges.width: missing 'high'; a range is {\"low\": A, \"high\": B}"
    assert not (runs_dir / ".search" / "bad.db").exists()


def test_a_database_that_is_not_there_is_one_line_not_a_traceback(tmp_path, runs_dir):
    """No server listens at the URL: starting, continuing and looking at a study each say so in one line."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY))
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    for args in (["--space", str(space), "--trials", "1"], ["--study", "gone", "--trials", "1"], ["--status", "gone"]):
        result = core_cli("search", "--storage", url, *args, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: database unreachable at {url}: ") and \
            "Connection refused" in result.stderr and result.stderr.count("\n") == 1, result.stderr


# ---- a study end to end ---------------------------------------------------------------------------------

@pytest.mark.kernels
def test_a_tiny_study_rejects_over_budget_designs_prunes_a_weak_trial_and_reports(runs_dir):
    """Three trials queued in order: one over the budget, one that learns, one that cannot (lr 1e-6).
    The first is never trained; the third is pruned after its first epoch (the median pruner compares
    it with the second); the status names the best trial and the accuracy/parameters front."""
    url = start_study(Space.from_dict(TINY), "e2e", None, 2).url
    study = optuna.load_study(study_name="e2e", storage=url)
    study.enqueue_trial({"width": 64, "lr": 0.2})
    study.enqueue_trial({"width": 8, "lr": 0.2})
    study.enqueue_trial({"width": 4, "lr": 1e-6})

    result = core_cli("search", "--study", "e2e", "--trials", "2", check=False)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)

    rejected, good, weak = status["trials"]
    assert rejected["state"] == "rejected" and rejected["run"] is None
    assert rejected["params"] == 76_490 and "76,490 parameters (budget 20,000)" in rejected["rejected"]
    assert study.trials[0].constraints == {"params_over_budget": 76_490 - BUDGET}  # what the sampler sees
    assert [run.name for run in trained_runs()] and sorted(r.name for r in trained_runs()) == ["e2e-001", "e2e-002"]
    for run in trained_runs():
        assert read_json(run.config_path)["params"] <= BUDGET
        assert run.config().train.val_fraction == 0.1 and run.metrics()[-1]["eval_split"] == "val"

    assert good["state"] == "finished" and good["params"] == 1_506
    assert good["accuracy"] == Run.named("e2e-001").summary()["best_acc"] > weak["accuracy"]
    assert weak["state"] == "pruned" and weak["pruned_at"] == 1
    weak_run = Run.named("e2e-002").status()
    assert weak_run["state"] == "pruned" and weak_run["pruned_at"] == 1
    assert status["best"]["number"] == 1 and status["counted"] == 2
    assert [row["number"] for row in status["pareto_front"]] == [1]
    assert status["states"] == {"rejected": 1, "finished": 1, "pruned": 1}

    again = core_cli("search", "--status", "e2e")  # from another process, reading the storage noted for the study
    assert json.loads(again.stdout)["trials"] == status["trials"]
    listed = {row["name"]: row for row in json.loads(core_cli("runs").stdout)}
    assert listed["e2e-002"]["state"] == "pruned" and listed["e2e-001"]["search"] == "e2e"


# ---- faults ----------------------------------------------------------------------------------------------

def test_a_stop_asked_before_the_detached_worker_starts_still_stops_it(runs_dir):
    """The worker that --detach starts does not clear the study's stop flag (its launcher did, before it):
    a stop between the launch and the worker's start is kept, and nothing trains. A search started
    again by hand clears it and continues."""
    study = start_study(Space.from_dict(TINY), "late", None, 1)
    request_stop(study)
    result = core_cli("search", "--study", "late", "--trials", "1", "--detached", check=False)  # what detach() runs
    assert result.returncode == 0, result.stderr
    assert "stop requested" in result.stderr and trained_runs() == []
    continue_study(study)
    assert study_status(study)["stop_requested"] is False


def test_a_stalled_trial_is_failed_not_relaunched_and_the_study_goes_on(runs_dir, hang):
    """Trial 0's training process hangs in a step (a kernel that never returns) and never ends by itself; its
    watcher kills it after the study's stall limit and ends its run failed, stalled; the worker fails the trial with
    that message instead of relaunching it (it would hang again), and trial 1 trains to its end."""
    hang("stall-000", after=5)
    url = start_study(Space.from_dict(TINY | {"stall_limit": 5, "pruner": "none"}), "stall", None, 2).url
    study = optuna.load_study(study_name="stall", storage=url)
    for _ in range(2):
        study.enqueue_trial({"width": 4, "lr": 0.2})

    result = core_cli("search", "--study", "stall", "--trials", "2", check=False)
    assert result.returncode == 0, result.stderr
    stalled, trained = json.loads(result.stdout)["trials"]
    assert stalled["state"] == "failed" and "stalled: no progress for" in stalled["error"], stalled
    assert "while training at epoch 0 step 5" in stalled["error"]
    assert trained["state"] == "finished" and trained["accuracy"] > 0
    run = Run.named("stall-000").status()
    assert run["state"] == "failed" and run["stalled"]["step"] == 5 and not run.get("relaunches"), run
    log = (runs_dir / ".search" / "stall.log").read_text() if (runs_dir / ".search" / "stall.log").exists() else \
        result.stderr
    assert "trial 0: stall-000 stalled; failed, and the study goes on" in log


def test_a_killed_trial_a_stopped_study_and_a_killed_search_all_resume_without_running_anything_twice(
        runs_dir, tmp_path):
    """One trial of two epochs, through every fault. kill -9 its process after the first epoch: the worker
    resumes the same run from there. `--stop` the study: the worker ends and the trial saves and stops.
    Search again: the trial resumes. kill -9 that worker: started once more, it waits for the trial still
    training instead of starting it over, and the study ends with one complete trial and nothing running."""
    start_study(Space.from_dict(TINY | {"epochs": 2, "ranges": TINY["ranges"] | {"width": 4}}),
                 "faults", None, 1)
    run = Run.named("faults-000")

    def running_again(old_pid: int):
        def check():
            status = run.status()
            return status.get("pid") != old_pid and status.get("state") == "running"
        return check

    first = worker("--study", "faults", "--trials", "1", log=tmp_path / "worker1.log")

    def first_epoch_saved():
        """the trial's first epoch, checkpoint saved"""
        return run.exists() and run.status().get("epoch") == 1
    wait_for(first_epoch_saved, 240, first_epoch_saved.__doc__)
    killed = run.status()["pid"]
    os.kill(killed, signal.SIGKILL)
    wait_for(running_again(killed), 240, "the trial relaunched")
    assert run.status()["relaunches"] == 1

    stopped = core_main("search", "--stop", "faults")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stop_requested"] is True
    assert first.wait(timeout=60) == 0
    wait_for(lambda: run.status()["state"] == "stopped", 120, "the trial stopped")
    status = json.loads(core_main("search", "--status", "faults").stdout)
    assert [t["state"] for t in status["trials"]] == ["stopped"] and not status["worker_alive"]

    second = worker("--study", "faults", "--trials", "1", log=tmp_path / "worker2.log")
    wait_for(running_again(run.status()["pid"]), 240, "the trial resumed")
    second.send_signal(signal.SIGKILL)
    second.wait()
    trial_pid = run.status()["pid"]

    third = worker("--study", "faults", "--trials", "1", log=tmp_path / "worker3.log")
    assert third.wait(timeout=300) == 0, (tmp_path / "worker3.log").read_text()
    assert run.status()["state"] == "finished" and run.status()["pid"] == trial_pid  # not relaunched again
    assert "had no process" not in (tmp_path / "worker3.log").read_text()
    assert [m["epoch"] for m in run.metrics() if m["kind"] == "epoch"] == [1, 2]
    log = run.log_path.read_text()
    assert log.count("training on cpu") == 3 and "resumed at epoch 1 step 0" in log
    # one trial, complete; if the stop outlasted the heartbeat's grace, Optuna failed it and queued it again,
    # and its retry resumed the same run
    study = optuna.load_study(study_name="faults", storage=Study("faults").url)
    states = [t.state for t in study.trials]
    assert states[-1] == optuna.trial.TrialState.COMPLETE and set(states[:-1]) <= {optuna.trial.TrialState.FAIL}
    assert study_status(Study("faults"))["counted"] == 1 and {t.user_attrs["run"] for t in study.trials} == {run.name}


# ---- several workers, SQLite and PostgreSQL ---------------------------------------------------------------

@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_workers_on_one_study_never_run_the_same_trial(storage, runs_dir, tmp_path, request):
    """Two worker processes, as on two machines, take trials from one study: each trial is trained once, by
    one of them, and the study (accuracy against parameters) ends with its Pareto front."""
    url = request.getfixturevalue("postgres").url if storage == "postgresql" else None
    space = TINY | {"objectives": ["accuracy", "params"], "pruner": "none",
                    "ranges": TINY["ranges"] | {"width": {"choices": [4, 8]}, "lr": 0.2}}
    url = start_study(Space.from_dict(space), "pair", url, 2).url
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [worker("--study", "pair", "--trials", "2", "--storage", url, log=log) for log in logs]
    for w, log in zip(workers, logs):
        assert w.wait(timeout=400) == 0, log.read_text()

    launches = [re.findall(r"trial \d+: pair-\d+ on cpu", log.read_text()) for log in logs]
    assert [len(lines) for lines in launches] == [1, 1], launches  # one trial each, at the same time
    assert not any("had no process" in log.read_text() for log in logs)  # nothing relaunched
    study = optuna.load_study(study_name="pair", storage=url)
    runs = {run.name: run.status()["search"] for run in trained_runs()}
    assert sorted(tag["trial"] for tag in runs.values()) == [t.number for t in study.trials] == [0, 1]
    for run in trained_runs():
        assert run.status()["state"] == "finished" and run.log_path.read_text().count("training on cpu") == 1
    status = study_status(Study("pair", url))
    assert status["counted"] == 2 and {r["state"] for r in status["trials"]} == {"finished"}
    front = {r["number"] for r in status["pareto_front"]}
    assert front and front == {t.number for t in study.best_trials}


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_workers_asking_at_the_same_moment_never_overshoot_the_trials(storage, runs_dir, request):
    """Two workers (as on two machines) both see room for the study's one trial
    and both ask: the second ask comes back uncounted and untrained, so one trial runs, not two."""
    url = request.getfixturevalue("postgres").url if storage == "postgresql" else None
    space = TINY | {"ranges": TINY["ranges"] | {"width": 8, "lr": 0.2}}
    url = start_study(Space.from_dict(space), "race", url, 1).url
    first, second = Worker(Study("race", url), 1), Worker(Study("race", url), 1)
    assert counted(first.study.get_trials()) == counted(second.study.get_trials()) == 0  # room for one, says each
    launched = [first.start_trial("cpu"), second.start_trial("cpu")]
    assert launched[0] is not None and launched[1] is None
    wait_for(lambda: launched[0].status()["state"] == "finished", 240, "the one trial finished")
    status = study_status(Study("race", url))
    assert status["counted"] == 1 and [r["number"] for r in status["trials"]] == [0]  # the surplus ask is not shown
    assert [run.name for run in trained_runs()] == ["race-000"]


@pytest.mark.long
def test_a_database_outage_mid_trial_is_ridden_out(runs_dir, tmp_path, postgres):
    """PostgreSQL stops after the trial's first epoch and comes back 40 s later (two beats past the heartbeat's grace).
    Meanwhile the trial trains to its end, its reports wait and its process waits to tell the study; the worker
    stays up and says the database is away. Back, every report arrives, the trial is complete, nothing is
    failed or relaunched, and the worker ends as usual."""
    space = TINY | {"epochs": 3, "ranges": TINY["ranges"] | {"width": 8, "lr": 0.2}}
    url = start_study(Space.from_dict(space), "outage", postgres.url, 1).url
    log = tmp_path / "worker.log"
    search = worker("--study", "outage", "--trials", "1", "--storage", url, log=log)
    run = Run.named("outage-000")
    study = optuna.load_study(study_name="outage", storage=url)
    wait_for(lambda: study.get_trials()[0].intermediate_values if study.get_trials() else None, 240,
             "the first epoch's report")
    postgres.stop()
    back_at = time.monotonic() + GRACE_S + 2 * HEARTBEAT_S  # 40 s: every heartbeat is stale by then
    try:
        wait_for(lambda: run.status()["state"] == "finished", 240, "the trial's end, with the database away")
        time.sleep(max(back_at - time.monotonic(), 20.0))  # and long after it: its process would have exited
        assert process_alive(run.status()["pid"], run.status().get("pid_start"))  # waiting to tell the study
        assert search.poll() is None, log.read_text()  # the worker rides it out
    finally:
        postgres.start()
    assert search.wait(timeout=300) == 0, log.read_text()
    worker_log, train_log = log.read_text(), run.log_path.read_text()
    assert "database away since" in worker_log and "database back" in worker_log and "Traceback" not in worker_log
    assert "search: database away since" in train_log and "search: database back" in train_log
    trials = optuna.load_study(study_name="outage", storage=url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert sorted(trials[0].intermediate_values) == [1, 2, 3]  # the reports made during the outage too
    assert train_log.count("training on cpu") == 1 and "had no process" not in worker_log
