"""A run's state with real processes: Stop at every moment of a run ends it `stopped`, and the launcher and
the training process, writing status.json at the same time, never undo each other's changes."""
import fcntl
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.data.sources import BUILTIN_ARCHIVE
from core.design.config import RunConfig, TrainConfig
from core.design.spec import ArchSpec
from core.runs.queue import lock_dir
from core.runs.run import Run, RunError, StopFlag, StopRequested, begin, create_run, delete, launch, stop
from core.processes import kill_tree
from tests.helpers import QUICK_ARCH, ROOT, wait_for

TINY = ArchSpec.from_dict(QUICK_ARCH)
# stopped mid-epoch, a run saves where it stopped: test_engine's and test_distributed's life tests
MOMENTS = ["queued", "starting", "loading data", "saving"]


def lines(run: Run, kind: str) -> list[dict]:
    return [line for line in run.metrics() if line.get("kind") == kind]


@pytest.mark.parametrize("moment", MOMENTS)
def test_stop_at_any_moment_ends_the_run_stopped(moment, runs_dir, tmp_path, monkeypatch):
    data = "builtin"
    if moment == "loading data":  # a copy read for the first time: decoding it takes seconds
        monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
        data = str(shutil.copy(BUILTIN_ARCHIVE, tmp_path / "slice.tar.gz"))
    train = TrainConfig(epochs=5, batch_size=128, log_every=2)  # each run is stopped long before its end
    run = create_run(RunConfig(TINY, train, data), f"stop-{moment.replace(' ', '-')}")
    lock = None
    if moment == "queued":  # another run holds the CPU (the conftest gives this test a lock folder of its own)
        lock_dir().mkdir(parents=True, exist_ok=True)
        lock = os.open(lock_dir() / "cpu.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        launch(run, "cpu")
        if moment == "queued":
            wait_for(lambda: run.status().get("waiting_for"), 300, "wait for the device")
        elif moment == "loading data":
            wait_for(lambda: run.status().get("state") == "running", 300, "start")
        elif moment == "saving":  # an epoch line is written just before its checkpoints are saved
            wait_for(lambda: lines(run, "epoch"), 300, "epoch line")
        stop(run)
        status = wait_for(lambda: run.status() if run.status().get("state") not in ("queued", "running") else None,
                          300, "end")
    finally:
        if lock is not None:
            os.close(lock)
    assert status["state"] == "stopped", f"{status}\n{run.log_tail()}"
    if moment == "saving":
        assert json.loads((run.checkpoints / "best.json").read_text())["epoch"] == 1


def set_fields(run_dir: str, prefix: str, count: int, start) -> None:
    start.wait()
    for i in range(count):
        Run(Path(run_dir)).update_status(**{f"{prefix}{i}": i})


def test_launcher_and_training_process_never_lose_each_others_fields(runs_dir):
    run = create_run(RunConfig(TINY), "race")
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=set_fields, args=(str(run.dir), prefix, 300, start))
               for prefix in ("launcher_", "trainer_")]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    status = run.status()
    assert [k for k in (f"{p}{i}" for p in ("launcher_", "trainer_") for i in range(300)) if k not in status] == []
    assert status["state"] == "queued"


def begin_then_listen(run_dir: str, ready, go) -> None:
    """The training process's start: listening first, then its first word; exits 3 when that word finds a
    stop already asked for, 4 when the signal arrives after, 5 when no stop ever reaches it."""
    flag = StopFlag()
    ready.set()
    go.wait()
    try:
        begin(Run(Path(run_dir)), "cpu")
    except StopRequested:
        os._exit(3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if flag():
            os._exit(4)
        time.sleep(0.01)
    os._exit(5)


def test_a_stop_racing_the_start_of_the_training_process_always_reaches_it(runs_dir):
    context = multiprocessing.get_context("fork")
    outcomes = []
    for i in range(40):
        run = create_run(RunConfig(TINY), f"race-{i}")
        ready, go = context.Event(), context.Event()
        child = context.Process(target=begin_then_listen, args=(str(run.dir), ready, go))
        child.start()
        ready.wait(60)
        go.set()
        stop(run)  # as the launcher's Stop: at the same moment as the child's first word
        child.join(60)
        outcomes.append(child.exitcode)
        assert child.exitcode in (3, 4), f"race {i}: the stop was lost ({run.status()})"
    print("stop found before the first word, signal after:", outcomes.count(3), outcomes.count(4))


def launch_when_told(run_dir: str, go, pids) -> None:
    go.wait(60)
    try:
        pids.put(launch(Run(Path(run_dir)), "cpu"))
    except RunError as e:
        pids.put(str(e))


def test_of_two_launches_of_a_run_at_the_same_moment_one_starts_it(runs_dir):
    """Launches released at the same instant (forked, so that no start-up time sets them apart): one starts the run,
    the other is told it is already queued, every time."""
    context = multiprocessing.get_context("fork")
    for i in range(5):
        run = create_run(RunConfig(TINY), f"twice-{i}")
        go, pids = context.Event(), context.Queue()
        launchers = [context.Process(target=launch_when_told, args=(str(run.dir), go, pids)) for _ in range(2)]
        for launcher in launchers:
            launcher.start()
        time.sleep(0.3)
        go.set()
        said = [pids.get(timeout=60) for _ in launchers]
        for launcher in launchers:
            launcher.join(60)
        for pid in [p for p in said if isinstance(p, int)]:
            kill_tree(pid)  # not to train: a watcher that imports torch is all it is yet
        assert sum(isinstance(p, int) for p in said) == 1, f"race {i}: {said}"
        assert any(isinstance(p, str) and "is already queued" in p for p in said), said


def test_two_launches_a_stop_with_a_resume_and_a_delete_of_one_run_at_the_same_moment_take_turns(runs_dir):
    """The page's launch and the CLI's `train --resume` of the same run at the same moment: one starts it, the other
    is told it is already queued; a Delete while it trains is refused; a Stop and a Resume at the same moment leave
    one whole status and no process behind."""
    run = create_run(RunConfig(TINY, TrainConfig(epochs=200, batch_size=64)), "contested")
    go = threading.Barrier(3)
    outcomes = []

    def page_launch():
        go.wait()
        try:
            outcomes.append(("page", launch(run, "cpu")))
        except RunError as e:
            outcomes.append(("page", str(e)))

    def cli_launch():
        go.wait()
        proc = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run.dir), "--device", "cpu",
                               "--detach"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        outcomes.append(("cli", proc.returncode, proc.stderr))

    threads = [threading.Thread(target=page_launch), threading.Thread(target=cli_launch)]
    for thread in threads:
        thread.start()
    go.wait()
    for thread in threads:
        thread.join(120)
    page, cli = dict((o[0], o[1:]) for o in outcomes)["page"], dict((o[0], o[1:]) for o in outcomes)["cli"]
    started = [isinstance(page[0], int), cli[0] == 0]
    assert started.count(True) == 1, outcomes
    refusal = cli[1] if started[0] else page[0]
    assert "contested is already queued" in refusal or "contested is already running" in refusal, outcomes
    wait_for(lambda: run.status()["state"] == "running", 120, "the run to train")

    with pytest.raises(RunError, match="stop it before deleting it"):
        delete(run)
    both = threading.Barrier(2)
    results = {}

    def act(name, action):
        both.wait()
        try:
            results[name] = action(run)
        except RunError as e:
            results[name] = str(e)

    actions = [threading.Thread(target=act, args=("stop", stop)),
               threading.Thread(target=act, args=("resume", lambda r: launch(r, "cpu")))]
    for thread in actions:
        thread.start()
    for thread in actions:
        thread.join(60)
    # the run was running, and the stop reaches it. A resume that takes the lock while it runs is refused; one that
    # takes it after the stop has ended the run (a tiny net stops within a second, and a loaded machine may hold the
    # resume's thread that long) starts it again, and is stopped here
    assert results["stop"]["stop_requested"], results
    if isinstance(results["resume"], int):
        assert "stopped on request" in run.log_path.read_text(), results
        stop(run)
    else:
        assert "already running" in results["resume"], results
    status = wait_for(lambda: run.status()["state"] not in ("queued", "running") and run.status(), 120,
                      "the run to stop")
    assert status["state"] == "stopped"
    delete(run)
    assert not run.dir.exists()


def test_a_change_of_a_run_waits_for_a_live_holder_of_its_lock_and_never_for_a_killed_one(runs_dir, monkeypatch):
    """The run folder's lock: held by another process, a stop waits LOCK_WAIT and says what to do; once that process
    is killed (SIGKILL: no chance to let go), the stop goes through at once."""
    monkeypatch.setattr("core.runs.run.LOCK_WAIT", 0.5)
    run = create_run(RunConfig(TINY), "held")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from core.files import FileLock; FileLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(120)", str(run.dir / ".run.lock")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunError, match=r"held: not done \(stop\): another launch, stop, repair or delete of this "
                                           r"run has held it for 0 s; try again in a moment"):
            stop(run)
        assert run.status()["state"] == "queued"
        holder.kill()
        holder.wait()
        assert stop(run)["state"] == "stopped"
    finally:
        holder.kill()
        holder.stdout.close()


def test_a_change_that_waited_for_a_delete_of_its_run_is_told_the_run_is_gone(runs_dir):
    """A stop that waits while a delete holds the lock finds, once it has the lock, the run folder gone (and its lock
    file with it): it says so rather than act on a run that is no more."""
    run = create_run(RunConfig(TINY), "going")
    # the delete's steps, with a pause between taking the lock and removing the folder
    deleter = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from core.files import FileLock; from core.runs.run import Run, remove_folder; "
                                "FileLock(Path(sys.argv[1]) / '.run.lock').acquire(); "
                                "print('held', flush=True); sys.stdin.readline(); "
                                "remove_folder(Run(Path(sys.argv[1])))",
                                str(run.dir)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert deleter.stdout.readline() == "held\n"
        said = []
        waiter = threading.Thread(target=lambda: said.append(pytest.raises(RunError, stop, run).value))
        waiter.start()
        time.sleep(1.0)  # the stop waits for the lock
        deleter.stdin.write("go\n")
        deleter.stdin.close()
        assert deleter.wait(30) == 0
        waiter.join(30)
        assert len(said) == 1 and f"{run.dir}: no such run" in str(said[0])
        assert list(runs_dir.iterdir()) == []  # nothing left behind, the moved-aside folder included
    finally:
        deleter.kill()
        deleter.stdout.close()
