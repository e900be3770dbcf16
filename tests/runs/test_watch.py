"""No run stalls silently and Stop always stops (core.runs.watch), with real processes: one frozen with SIGSTOP,
one stuck in a step that never returns (a hung kernel), one stopped while it waits in the queue."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import QUICK_ARCH, ROOT, SMALL_ARCH, core_cli, wait_for
from core.processes import process_alive
from core.runs.run import Run
from core.runs.watch import read_heartbeat

@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def launch(runs, tmp_path, name: str, **train) -> Run:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"arch": SMALL_ARCH, "data": "builtin",
                                  "train": {"epochs": 3, "batch_size": 64, "log_every": 5} | train}))
    core_cli("train", "--config", str(config), "--run-dir", str(runs / name), "--device", "cpu", "--detach")
    return Run(runs / name)


def in_phase(run: Run, phase: str) -> bool:
    return (read_heartbeat(run) or {}).get("phase") == phase


def ended(run: Run) -> dict | None:
    status = run.status()
    return status if status["state"] not in ("queued", "running") else None


def test_a_frozen_run_ends_failed_as_stalled_by_itself_and_the_next_queued_run_starts(runs, tmp_path):
    frozen = launch(runs, tmp_path, "frozen", stall_limit=6, epochs=100)  # still training when the second queues
    wait_for(lambda: in_phase(frozen, "training"), 120, "the run to train")
    waiting = launch(runs, tmp_path, "waiting")
    wait_for(lambda: waiting.status().get("waiting_for"), 60, "the second run to queue behind the first")
    trainer = frozen.status()["pid"]
    os.kill(trainer, signal.SIGSTOP)  # alive, holding the CPU, and doing nothing: nobody is watching but the watcher
    try:
        status = wait_for(lambda: ended(frozen), 60, "the watcher to end the frozen run")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer, signal.SIGCONT)  # a failed test leaves no frozen process behind
    wait_for(lambda: not process_alive(trainer, frozen.status()["pid_start"]), 30, "the frozen process to be killed")
    assert status["state"] == "failed" and status["error"].startswith("stalled: no progress for")
    phase = status["stalled"]["phase"]  # frozen within a step or an evaluation: wherever SIGSTOP found it
    assert phase in ("training", "evaluating") and status["stalled"]["seconds"] >= 6, status
    assert re.search(rf"while {phase} at epoch \d+ step \d+ \(limit 6 s\)", status["error"]), status["error"]
    advice = "A kernel may hang" if phase == "training" else "look at its train.log"
    # frozen in epoch 1's evaluation, it has no checkpoint yet, and the advice says so
    start = "from its last checkpoint" if (frozen.checkpoints / "last.json").exists() else "from the start"
    assert advice in status["error"] and f"a resume starts {start}" in status["error"], status["error"]
    assert "failed: stalled" in frozen.log_tail()
    wait_for(lambda: waiting.status()["state"] == "running" and not waiting.status().get("waiting_for"), 60,
             "the queued run to take the freed CPU")
    core_cli("stop", str(waiting.dir))
    assert wait_for(lambda: ended(waiting), 120, "the second run to stop")["state"] == "stopped"


@pytest.mark.long
def test_a_run_stuck_in_a_step_stalls_and_one_that_ignores_stop_is_killed_and_ends_stopped(runs, tmp_path, hang):
    hang("stuck", after=8)
    stuck = launch(runs, tmp_path, "stuck", stall_limit=5)
    status = wait_for(lambda: ended(stuck), 180, "the watcher to find the stuck run")
    assert status["state"] == "failed" and status["stalled"]["phase"] == "training", status
    assert status["stalled"]["step"] == 8  # the steps before the hang were counted, the hung one never ended

    hang("deaf", after=8)
    deaf = launch(runs, tmp_path, "deaf")  # the default stall limit (2 minutes) is far off
    wait_for(lambda: (read_heartbeat(deaf) or {}).get("step") == 8, 180, "the run to reach its hung step")
    asked = time.monotonic()
    assert json.loads(core_cli("stop", str(deaf.dir)).stdout)["stop_requested"] is True
    status = wait_for(lambda: ended(deaf), 90, "the watcher to end a run deaf to Stop")
    assert status["state"] == "stopped" and status["forced"] is True
    assert 15 < time.monotonic() - asked < 60  # after the grace period, not at once and not never
    assert "did not stop within 20 s of the request" in deaf.log_tail()


def test_stop_cancels_a_queued_run_at_once_and_it_never_trains(runs, tmp_path):
    busy = launch(runs, tmp_path, "busy", epochs=100)  # busy until it is stopped
    wait_for(lambda: in_phase(busy, "training"), 120, "the first run to train")
    queued = launch(runs, tmp_path, "queued")
    wait_for(lambda: queued.status().get("waiting_for"), 60, "the second run to queue")
    asked = time.monotonic()
    core_cli("stop", str(queued.dir))
    status = wait_for(lambda: ended(queued), 30, "the queued run to stop")
    assert status["state"] == "stopped" and time.monotonic() - asked < 10
    core_cli("stop", str(busy.dir))
    wait_for(lambda: ended(busy), 120, "the first run to stop")
    time.sleep(2)  # the CPU is free now: a run that was only pretending to stop would start here
    assert queued.status()["state"] == "stopped" and not queued.metrics_path.exists()
    assert "training on" not in queued.log_tail()


def training_processes(run: Run) -> list[psutil.Process]:
    """Every live process of this machine whose command line names the run's folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if str(run.dir) in " ".join(proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@pytest.mark.parametrize("how", ["kill -9 of the watcher", "its terminal closed (SIGHUP)"])
def test_a_foreground_run_whose_watcher_dies_or_terminal_closes_saves_and_stops(runs, tmp_path, how):
    config = tmp_path / "long.json"
    config.write_text(json.dumps({"arch": QUICK_ARCH, "data": "builtin",
                                  "train": {"epochs": 500, "batch_size": 64, "log_every": 5}}))
    run = Run(runs / "orphan")
    watcher = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir",
                                str(run.dir), "--device", "cpu"], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a foreground run's own session
    try:
        wait_for(lambda: in_phase(run, "training"), 120, "the run to train")
        (trainer,) = psutil.Process(watcher.pid).children()
        if how.startswith("kill"):
            watcher.kill()
        else:
            os.killpg(watcher.pid, signal.SIGHUP)  # what closing the terminal sends its foreground processes
        watcher.wait(30)
        psutil.wait_procs([trainer], timeout=40)  # it notices at once, finishes its step and saves
        assert not trainer.is_running() and training_processes(run) == [], "a training process was left unwatched"
        status = run.status()
        assert status["state"] == "stopped", status
        assert (run.checkpoints / "last.json").exists() and "stopped on request" in run.log_tail()  # saved
    finally:
        for proc in training_processes(run):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_the_workers_of_a_run_on_several_processes_stop_when_their_agent_dies(runs, tmp_path):
    """torchrun's workers start in sessions of their own: killed with kill -9, their agent (the watched process,
    or on a machine of a run across machines, the process `core train --nnodes` runs) would leave them training
    on, unwatched. Each worker watches its agent, saves and stops."""
    config = tmp_path / "long.json"
    config.write_text(json.dumps({"arch": QUICK_ARCH, "data": "builtin",
                                  "train": {"epochs": 500, "batch_size": 64, "log_every": 5}}))
    run = Run(runs / "agentless")
    watcher = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir",
                                str(run.dir), "--device", "cpu", "--nproc-per-node", "2"], cwd=ROOT,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: in_phase(run, "training"), 180, "the run to train")
        (agent,) = psutil.Process(watcher.pid).children()
        workers = agent.children()
        assert len(workers) == 2
        agent.kill()
        psutil.wait_procs(workers, timeout=60)
        assert training_processes(run) == [], "a worker was left training unwatched"
        assert run.status()["state"] in ("stopped", "failed") and (run.checkpoints / "last.json").exists()
    finally:
        for proc in training_processes(run):
            with contextlib.suppress(psutil.Error):
                proc.kill()
