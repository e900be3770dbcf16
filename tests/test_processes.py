"""Detached processes and locks, with real processes: core.processes starts one in a session of its own and knows it
again by its pid and start time, never a later process with its pid; core.files.FileLock is exclusive across
processes, waits or not, and is free again the moment its holder is killed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core.files import FileLock, is_locked
from core.processes import process_alive, process_start_time, start_detached
from tests.helpers import ROOT, wait_for

SLEEPER = "import os, sys, time; print(os.getcwd(), os.environ.get('PROBE_WORD'), flush=True); time.sleep(60)"


def test_a_detached_process_runs_in_its_own_session_logs_and_is_known_by_its_start(tmp_path):
    log = tmp_path / "out.log"
    log.write_text("before\n")
    started = start_detached([sys.executable, "-c", SLEEPER], log, cwd=tmp_path,
                             env=os.environ | {"PROBE_WORD": "hello"})
    try:
        assert os.getsid(started.pid) == started.pid != os.getsid(0)  # a session of its own: outlives ours
        assert wait_for(lambda: len(log.read_text().splitlines()) == 2, 30, "its first line")
        assert log.read_text() == f"before\n{tmp_path} hello\n"  # appended to its log, run in cwd with env
        assert started.start == process_start_time(started.pid) is not None
        assert process_alive(started.pid, started.start) and process_alive(started.pid)
    finally:
        os.kill(started.pid, signal.SIGKILL)
    # reaped once it ends: no zombie under a long-lived parent, and it reads as gone
    wait_for(lambda: not psutil.pid_exists(started.pid), 30, "the killed process to be reaped")
    assert not process_alive(started.pid, started.start) and process_start_time(started.pid) is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the start time run folders kept is Linux's")
def test_the_start_time_is_what_run_folders_written_before_psutil_kept():
    """Old run folders kept /proc/PID/stat's start field (clock ticks since boot): it still names the process."""
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    kept = stat.rsplit(")", 1)[1].split()[19]
    assert process_start_time(os.getpid()) == kept
    assert process_alive(os.getpid(), kept)


def test_a_later_process_with_the_pid_is_not_mistaken_for_the_recorded_one():
    """A pid comes back for another process once the first ends: the start time tells them apart."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine, theirs = process_start_time(os.getpid()), process_start_time(other.pid)
        assert mine != theirs
        assert not process_alive(os.getpid(), theirs)  # this pid, recorded with another process's start
        assert not process_alive(other.pid, mine)
    finally:
        other.kill()
        other.wait()
    assert not process_alive(other.pid, theirs) and not process_alive(other.pid)


def test_an_ended_process_not_yet_reaped_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(child.pid)
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child to end")
    assert not process_alive(child.pid, start) and not process_alive(child.pid)
    assert process_start_time(child.pid) is None
    child.wait()


@pytest.mark.parametrize("pid", [None, 0, -3, "123", True])
def test_no_pid_is_no_process(pid):
    assert not process_alive(pid)


HOLD = ("import sys, time; from core.files import FileLock; lock = FileLock(__import__('pathlib').Path(sys.argv[1])); "
        "lock.acquire(); lock.note('the holder'); print('held', flush=True); time.sleep(120)")


def test_a_lock_is_exclusive_across_processes_and_free_once_its_holder_is_killed(tmp_path):
    path = tmp_path / "device.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        lock = FileLock(path)
        assert is_locked(path)
        assert not lock.acquire(wait=0)  # does not wait
        began = time.monotonic()
        assert not lock.acquire(wait=0.5)  # waits that long, then gives up
        assert time.monotonic() - began >= 0.5
        assert path.read_text() == "the holder"  # its note: trying to take the lock leaves the file as it was
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert not is_locked(path)
        assert lock.acquire(wait=0)
        assert is_locked(path) and path.read_text() == "the holder"
        lock.release()
    finally:
        holder.kill()
        holder.stdout.close()


def test_a_blocking_lock_waits_for_its_holder_and_is_not_reentrant(tmp_path):
    path = tmp_path / "x.lock"
    first = FileLock(path)
    first.acquire()
    assert not FileLock(path).acquire(wait=0)  # a second lock of the same file in the same process waits too
    waiter = subprocess.Popen([sys.executable, "-c", "import sys, pathlib; from core.files import FileLock; "
                               "FileLock(pathlib.Path(sys.argv[1])).acquire(); print('got it', flush=True)", str(path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting
        first.release()
        assert waiter.stdout.readline() == "got it\n"
        assert waiter.wait(30) == 0
    finally:
        waiter.kill()
        waiter.stdout.close()


def test_is_locked_makes_no_file_and_a_lock_in_a_gone_folder_says_so(tmp_path):
    assert not is_locked(tmp_path / "none.lock") and not (tmp_path / "none.lock").exists()
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "gone" / ".run.lock").acquire(wait=1)
