"""No run stalls silently, and Stop always stops: a run's heartbeat, and the watcher that reads it.

The training process beats (`Heartbeat`): heartbeat.json says its phase, epoch, step, median step time and
when it last made progress, rewritten at most once a second and at every change of phase. `python -m core
train` does not train in its own process: it starts the training process and watches it (`watch`), so that
every run, detached or not, has a watcher that needs no app or CLI open. The watcher

  * kills a training process whose heartbeat has not moved for its phase's limit (a kernel that never
    returns, a process frozen by SIGSTOP, a deadlock) and ends the run `failed`, saying it stalled, in
    which phase and at which step, and what to try; the device lock dies with the process, so the queue
    moves on;
  * kills a training process that has not stopped STOP_GRACE seconds after a stop was asked for (it
    could not get back to the loop to save) and ends the run `stopped`: it resumes from its last
    checkpoint.

The watcher is watched in turn: when it dies (kill -9, a crash, the terminal of a foreground `core train`
closed), its training process learns it within a second, from the kernel (PR_SET_PDEATHSIG, on Linux) and from a
thread that polls its parent (`watched_by`), and saves and stops as on a Stop; one that cannot get back to its
loop within the stop grace ends itself. No run trains on unwatched. SIGHUP (a closed terminal) is a Stop to both.

Limits per phase: waiting in the queue never stalls; starting, loading data and the first steps of a
session (compiling, tuning kernels) get generous fixed limits; training, evaluating and saving get the
run's stall limit: the config's `stall_limit`, or max(STALL_FLOOR, STALL_STEPS x the median step time).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import psutil

from core.files import FileError, read_json
from core.runs.run import ACTIVE, Run, ended_by_death

BEAT_EVERY = 1.0          # seconds between two writes of heartbeat.json within a phase
STALL_FLOOR = 120.0       # seconds: no run is called stalled sooner (unless its config says so)
STALL_STEPS = 30          # ... nor before this many median steps have passed without one
PHASE_LIMITS = {          # seconds a phase may go without a beat, whatever the run's step time
    "starting": 300.0,    # imports
    "loading data": 1800.0,  # decoding a dataset the first time, or downloading it
    "warming up": 900.0,  # the first steps of a session: compiling, tuning kernels, allocating
}
UNLIMITED = ("waiting",)  # in the device queue: waiting for another run is not stalling
STOP_GRACE = 20.0         # seconds a stopped process has to save and end, at least ...
STOP_GRACE_STEPS = 5      # ... or this many median steps, if more
POLL = 0.5                # how often the watcher looks
WATCHER_ENV = "RESNET_STUDIO_WATCHER"  # the watcher's pid, in the environment of the process it watches
PR_SET_PDEATHSIG = 1      # prctl(2): the signal a process gets when its parent dies


class Heartbeat:
    """The training process's side: `phase()` at each change, `step()` after every training step or evaluation
    batch. `time` in the file is when the process last made progress, not when the file was written: a thread
    writes the latest state once a second, so the step a hung process got stuck after is on disk. Only rank 0
    of a run beats (others pass `enabled=False`)."""

    def __init__(self, run: Run, enabled: bool = True):
        self.run, self.enabled = run, enabled
        self.state = {"phase": "starting", "epoch": 0, "step": 0, "step_time": None, "pid": os.getpid(),
                      "time": time.time()}
        self.times: deque[float] = deque(maxlen=50)  # recent step times, for the median
        self.last_step = 0.0
        self.changed = threading.Event()
        if enabled:
            threading.Thread(target=self.keep_writing, daemon=True).start()

    def phase(self, phase: str, **where) -> None:
        self.state = self.state | {"phase": phase, "time": time.time(), **where}
        self.last_step = 0.0  # a step time never spans two phases
        self.write()

    def step(self, epoch: int, step: int) -> None:
        now = time.monotonic()
        if self.last_step:
            self.times.append(now - self.last_step)
        self.last_step = now
        self.state = self.state | {"epoch": epoch, "step": step, "time": time.time()}
        self.changed.set()

    def keep_writing(self) -> None:
        while True:
            self.changed.wait()
            self.changed.clear()
            self.write()
            time.sleep(BEAT_EVERY)

    def write(self) -> None:
        if not self.enabled:
            return
        state = self.state | {"step_time": statistics.median(self.times) if self.times else None}
        with contextlib.suppress(OSError):  # a full disk: the run fails where it writes metrics, not here
            self.run.write_heartbeat(state)


def read_heartbeat(run: Run) -> dict | None:
    try:
        return read_json(run.heartbeat_path, default=None)
    except FileError:
        return None  # half a file cannot happen (atomic writes); a damaged one counts as no beat


def stall_limit(beat: dict, configured: float) -> float | None:
    """Seconds without a beat after which this phase is stalled; None: it never is."""
    phase = beat.get("phase")
    if phase in UNLIMITED:
        return None
    if phase in PHASE_LIMITS:
        return max(PHASE_LIMITS[phase], configured)
    if configured:
        return configured
    return max(STALL_FLOOR, STALL_STEPS * (beat.get("step_time") or 0.0))


def stop_grace(beat: dict | None) -> float:
    return max(STOP_GRACE, STOP_GRACE_STEPS * ((beat or {}).get("step_time") or 0.0))


def where_text(beat: dict) -> str:
    if beat.get("phase") in ("training", "evaluating", "saving"):
        return f"while {beat['phase']} at epoch {beat.get('epoch', 0)} step {beat.get('step', 0)}"
    return f"while {beat.get('phase', 'starting')}"


def stall_advice(beat: dict) -> str:
    if beat.get("phase") in ("training", "warming up"):
        return ("A kernel may hang on this CPU or GPU: resume it, or try precision fp32, another batch size, or "
                "compile off; if the process was only slow, raise train.stall_limit")
    if beat.get("phase") == "loading data":
        return "Check that the data's folder or archive is readable and not on a hung network disk, then resume"
    return "Resume it; if it stalls again at the same point, look at its train.log"


# ---- the watcher ---------------------------------------------------------------------------------------

@dataclass
class Ending:
    """How the watcher ended a run it had to kill: the status fields to write."""
    fields: dict
    message: str


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


def watch(run: Run, command: list[str], configured_limit: float = 0.0) -> int:
    """Run `command` (the training process of `run`) and watch it until it ends; returns its exit code, or what
    the watcher made of it when it had to kill it (1: stalled, 0: stopped). SIGTERM and SIGINT to the watcher
    are passed on as a stop."""
    run.write_heartbeat({"phase": "starting", "time": time.time(), "pid": None})
    child = subprocess.Popen(command, env=os.environ | {WATCHER_ENV: str(os.getpid())})
    run.update_status(watcher_pid=os.getpid())
    stop_asked = {"at": None}

    def pass_on(*_):
        stop_asked["at"] = stop_asked["at"] or time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal of a foreground run closed
        signal.signal(sig, pass_on)
    ending = None
    while child.poll() is None:
        time.sleep(POLL)
        try:
            status = run.status()
        except FileError:  # damaged from outside: rebuilt from the process we watch, and watched on
            status = run.update_status()
        beat = read_heartbeat(run) or {}
        if child.poll() is not None or status.get("watcher_pid") != os.getpid():
            continue  # it has ended, or the run was launched again: the status is another session's
        if status.get("state") not in ACTIVE:
            continue  # it has said how it ended and is exiting
        if status.get("stop_requested") and stop_asked["at"] is None:
            stop_asked["at"] = time.monotonic()  # `core stop` signals the training process itself
        if stop_asked["at"] is not None and beat.get("phase") in ("starting", "waiting"):
            ending = Ending({"state": "stopped"}, "stopped before it started training")  # nothing to save
        elif stop_asked["at"] is not None and time.monotonic() - stop_asked["at"] > stop_grace(beat):
            ending = stopped_by_force(run, beat)
        elif "time" in beat and (limit := stall_limit(beat, configured_limit)) is not None and \
                time.time() - beat["time"] > limit:
            ending = stalled(run, beat, time.time() - beat["time"], limit)
        if ending is not None:
            # said before the kill: whoever reads the status between the two must not take it for a death
            run.update_status(**ending.fields, ended=time.time(), waiting_for=None)
            say(run, ending.message)
            kill_tree(child.pid)
            child.wait()
            return 0 if ending.fields["state"] == "stopped" else 1
    try:
        status = run.status()  # a training process that died without a word is marked failed now, not when read
    except FileError:
        status = run.update_status()
    if status.get("state") in ACTIVE and status.get("watcher_pid") == os.getpid() and \
            status.get("pid") in (None, os.getpid(), child.pid):
        run.update_status(**ended_by_death(status))  # it died before it could say it was running
    return child.returncode


def stalled(run: Run, beat: dict, silent: float, limit: float) -> Ending:
    error = (f"stalled: no progress for {silent:.0f} s {where_text(beat)} (limit {limit:.0f} s); the process was "
             f"killed and its device freed. {stall_advice(beat)}; a resume starts {resume_point(run)}")
    stall = {k: beat.get(k) for k in ("phase", "epoch", "step")} | {"seconds": round(silent, 1), "limit": limit}
    return Ending({"state": "failed", "error": error, "stalled": stall}, f"failed: {error}")


def resume_point(run: Run) -> str:
    """Where a resume would start, from the `last` checkpoint's record (plain JSON: no torch needed)."""
    try:
        meta = run.checkpoint_meta("last")
    except FileError:
        meta = None
    if not meta:
        return "from the start: it had saved no checkpoint yet"
    return f"from its last checkpoint, epoch {meta.get('epoch', 0)} step {meta.get('step', 0)}"


def stopped_by_force(run: Run, beat: dict) -> Ending:
    message = (f"stopped: the training process did not stop within {stop_grace(beat):.0f} s of the request "
               f"({where_text(beat)}) and was killed; a resume starts {resume_point(run)}")
    return Ending({"state": "stopped", "forced": True}, message)


# ---- the training process's side: never unwatched ---------------------------------------------------------


def watched_by(run: Run, watcher: int | None = None) -> None:
    """Called first thing by a training process a watcher started: when the watcher dies, save and stop (the
    StopFlag's SIGTERM), and end for good if that takes longer than the stop grace. Without a watcher (a
    process started otherwise), nothing. A torchrun worker passes its parent, the torchrun agent of its
    machine: a run across machines has no watcher of ours, but no worker outlives its machine's agent."""
    watcher = watcher or int(os.environ.get(WATCHER_ENV) or 0)
    if not watcher:
        return
    set_parent_death_signal(signal.SIGTERM)
    threading.Thread(target=guard, args=(run, watcher), daemon=True, name="watcher-guard").start()


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel for `sig` when our parent dies (Linux); False where that cannot be had: polling covers it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def guard(run: Run, watcher: int) -> None:
    """Poll the parent; once it is not the watcher any more (the watcher died: we were handed to init), stop."""
    while os.getppid() == watcher:
        time.sleep(POLL)
    with contextlib.suppress(FileError, OSError):
        run.update_status(stop_requested=True)  # so that however it ends, it reads as stopped, to resume
    say(run, f"stopping: its watcher (pid {watcher}) is gone, and no run trains unwatched; resume it to continue")
    os.kill(os.getpid(), signal.SIGTERM)  # the StopFlag: finish the step, save, stop
    grace = stop_grace(read_heartbeat(run))
    time.sleep(grace)
    say(run, f"stopped by force: not stopped {grace:.0f} s after its watcher died; a resume starts "
             f"{resume_point(run)}")
    with contextlib.suppress(FileError, OSError):
        run.update_status(state="stopped", forced=True, ended=time.time(), waiting_for=None)
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    os.kill(os.getpid(), signal.SIGKILL)


def say(run: Run, message: str) -> None:
    with contextlib.suppress(OSError):
        run.log(message)
