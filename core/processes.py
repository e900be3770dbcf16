"""Processes in the background: the one place that starts a detached process, and that tells whether a process
recorded earlier (a pid and its start time) is still that same process; and the one that kills a process with
every process it started (kill_tree).

A detached process (a training run, a search worker, a probe, an export) runs in a session of its own, so it outlives
the app or command that started it and a Ctrl-C there does not reach it; its output goes to a log file, and it is
reaped when it ends, so a finished child of a long-lived app does not linger as a zombie.

A pid alone does not name a process: once it ends, the OS gives its pid to a later one. So whoever records a process
records its start time too (`pid_start`, psutil's creation time as clock ticks since boot: the kernel's own count,
which clock changes do not move, and what run folders have always stored), and a process is the recorded one only
while both agree.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Started:
    """A process as it is recorded: `pid` and `start` (pid_start in the JSON files that keep it)."""
    pid: int
    start: str | None


def start_detached(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> Started:
    """Start `command` in `cwd` in a session of its own, with no input and its output appended to `log`; at once.
    `env` is its whole environment (this process's by default)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd, env=env)
    started = Started(proc.pid, process_start_time(proc.pid))
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends: no zombie under a long-lived app
    return started


def process_start_time(pid: int) -> str | None:
    """When process `pid` started, as clock ticks since boot, in a string; None when there is no such process or it
    has ended (a zombie: dead, not yet reaped). Seconds since boot rather than psutil's epoch time, which moves
    when the system clock is set: a live run must not look like another process after an NTP step."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        since_boot = proc.create_time() - psutil.boot_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None
    return str(round(since_boot * CLOCK_TICKS))


def process_alive(pid, start: str | None = None) -> bool:
    """Whether process `pid` runs, and is the one that started at `start` (any process with that pid, when `start`
    is None: a status written where the start time was not known)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it runs, though we cannot tell whose it is
        return start is None
    return start is None or process_start_time(pid) == start


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (torchrun's workers too); a frozen (SIGSTOPped) process
    dies as well."""
    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(family, timeout=10)
