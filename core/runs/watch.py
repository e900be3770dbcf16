"""No run stalls silently, and Stop always stops: a run's heartbeat, and the watcher that reads it.

The training process beats (`Heartbeat`): heartbeat.json says its phase, epoch, step, median step time and
when it last made progress, rewritten every second or two and at every change of phase. `python -m core
train` does not train in its own process: it starts the training process and watches it (`watch`), so that
every run, detached or not, has a watcher that needs no app or CLI open. The watcher

  * kills a training process whose heartbeat has not moved for its phase's limit (a kernel that never
    returns, a process frozen by SIGSTOP, a deadlock) and ends the run `failed`, saying it stalled, in
    which phase and at which step, and what to try; the device lock dies with the process, so the queue
    moves on;
  * kills a training process that has not stopped STOP_GRACE seconds after a stop was asked for (it
    could not get back to the loop to save) and ends the run `stopped`: it resumes from its last
    checkpoint.

A run across machines (`core train --nnodes N --node-rank K` on each) is watched per machine: each machine's
`core train` watches its own processes, whose first process (local rank 0) beats into that machine's heartbeat
file (Run.heartbeat_file). A stall on a machine is ended by that machine's watcher, which names the machine; the
others' processes then lose their partner and end. All processes of a run wait for each other at every step, so a
stall shows on every machine at once: a watcher whose own processes still live (their heartbeat is rewritten
every second, even while they wait) and that sees another machine's heartbeat frozen leaves that machine's
watcher to end it, for one more stall limit at most. Machine 0 keeps the run's status, and the first cause written
stands.

The watcher is watched in turn: when it dies (kill -9, a crash, the terminal of a foreground `core train`
closed), its training process learns it within a second, from the kernel (PR_SET_PDEATHSIG, on Linux) and from a
thread that polls its parent (`watched_by`), and saves and stops as on a Stop; one that cannot get back to its
loop within the stop grace ends itself. No run trains on unwatched. SIGHUP (a closed terminal) is a Stop to both.

Limits per phase: waiting in the queue never stalls; starting, loading data and the first steps of a
session (compiling, tuning kernels) get generous fixed limits; training, evaluating and saving get the
run's stall limit: the config's `stall_limit`, or max(STALL_FLOOR, STALL_STEPS x the median step time).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import psutil

from core.files import FileError, read_json
from core.processes import kill_tree
from core.runs.run import ACTIVE, Run, death_text, ended_by_death

BEAT_EVERY = 1.0          # seconds between two writes of heartbeat.json within a phase (twice that, idle)
STALL_FLOOR = 120.0       # seconds: no run is called stalled sooner (unless its config says so)
STALL_STEPS = 30          # ... nor before this many median steps have passed without one
PHASE_LIMITS = {          # seconds a phase may go without a beat, whatever the run's step time
    "starting": 300.0,    # imports
    "loading data": 1800.0,  # decoding a dataset the first time, or downloading it
    "warming up": 900.0,  # the first steps of a session: compiling, tuning kernels, allocating
}
UNLIMITED = ("waiting", "joining")  # in the device queue, or waiting for a run's other machines: not stalling
STOP_GRACE = 20.0         # seconds a stopped process has to save and end, at least ...
STOP_GRACE_STEPS = 5      # ... or this many median steps, if more
POLL = 0.5                # how often the watcher looks
WATCHER_ENV = "RESNET_STUDIO_WATCHER"  # the watcher's pid, in the environment of the process it watches
NODE_ENV = "RESNET_STUDIO_NODE"  # on a run across machines, the watcher's --node-rank, for the same (and its workers)
FROZEN = 8.0              # seconds: a heartbeat file not rewritten for this long is a frozen (or gone) process's
PR_SET_PDEATHSIG = 1      # prctl(2): the signal a process gets when its parent dies


class Heartbeat:
    """The training process's side: `phase()` at each change, `step()` after every training step or evaluation
    batch. `time` in the file is when the process last made progress, not when the file was written: a thread
    writes the latest state once a second, so the step a hung process got stuck after is on disk, and rewrites it
    every second or two even without progress (`written`), so that a frozen process is told from one that waits.
    The first process of each machine beats (others pass `enabled=False`), into its machine's file: `node`, else
    this_node()."""

    def __init__(self, run: Run, enabled: bool = True, node: int | None = None):
        node = this_node() if node is None else node
        self.run, self.node, self.enabled = run, node, enabled
        self.state = {"phase": "starting", "epoch": 0, "step": 0, "step_time": None, "pid": os.getpid(),
                      "node": node, "time": time.time()}
        self.times: deque[float] = deque(maxlen=50)  # recent step times, for the median
        self.last_step = 0.0
        self.changed = threading.Event()
        self.lock = threading.Lock()  # one write at a time, and none cut short at exit (its temp file left behind)
        if enabled:
            atexit.register(self.close)
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
            self.changed.wait(BEAT_EVERY)
            self.changed.clear()
            self.write()
            time.sleep(BEAT_EVERY)

    def write(self) -> None:
        with self.lock:
            if not self.enabled:
                return
            state = self.state | {"step_time": statistics.median(self.times) if self.times else None,
                                  "written": time.time()}
            with contextlib.suppress(OSError):  # a full disk: the run fails where it writes metrics, not here
                self.run.write_heartbeat(state, self.node)

    def close(self) -> None:
        """No more writes: at exit, once the write under way (if any) is done."""
        with self.lock:
            self.enabled = False


def mark_phase(run: Run, node: int, phase: str, pid: int | None = None) -> None:
    """Machine `node`'s phase, said by a process that does not beat (its watcher, its torchrun launcher) before its
    first process beats: written once, so that it never overwrites that process's beats."""
    run.write_heartbeat({"phase": phase, "time": time.time(), "pid": pid, "node": node}, node)


def this_node() -> int:
    """This machine's number among a run's machines: its watcher's --node-rank, else torchrun's (GROUP_RANK, under
    a bare torchrun), else 0."""
    try:
        return int(os.environ.get(NODE_ENV) or os.environ.get("GROUP_RANK") or 0)
    except ValueError:
        return 0


def read_heartbeat(run: Run, node: int | None = None) -> dict | None:
    """Machine `node`'s heartbeat; without `node`, the run's: on a run across machines (this session's `nnodes` in
    its status), the beat of the machine that made progress longest ago, where a stall shows."""
    if node is not None:
        return read_beat(run.heartbeat_file(node))
    try:
        nodes = int(run.status().get("nnodes") or 1)
    except (FileError, TypeError, ValueError):
        nodes = 1
    beats = [beat for n in range(nodes) if (beat := read_beat(run.heartbeat_file(n)))]
    return min(beats, key=lambda beat: number(beat.get("time")), default=None)


def read_beat(path) -> dict | None:
    try:
        beat = read_json(path, default=None)
    except FileError:
        return None  # half a file cannot happen (atomic writes); a damaged one counts as no beat
    return beat if isinstance(beat, dict) else None


def number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def frozen(beat: dict | None) -> bool:
    """Whether the process that beats has stopped rewriting its file (frozen, stuck holding the interpreter, gone):
    a process that only waits, for a kernel or another machine, still rewrites it."""
    return bool(beat) and bool(beat.get("written")) and time.time() - number(beat.get("written")) > FROZEN


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


def watch(run: Run, command: list[str], configured_limit: float = 0.0, node: int = 0, nodes: int = 1) -> int:
    """Run `command` (the training process of `run`) and watch it until it ends; returns its exit code, or what
    the watcher made of it when it had to kill it (1: stalled, 0: stopped). SIGTERM and SIGINT to the watcher
    are passed on as a stop. On a run across machines, this is machine `node` of `nodes`: it watches this
    machine's processes through this machine's heartbeat; machine 0's watcher keeps the status."""
    head, machine = node == 0, node if nodes > 1 else None
    mark_phase(run, node, "starting")
    env = os.environ | {WATCHER_ENV: str(os.getpid())} | ({NODE_ENV: str(node)} if machine is not None else {})
    child = subprocess.Popen(command, env=env)
    if head:  # this session's machines: whose heartbeats the run's readers look at
        run.update_status(watcher_pid=os.getpid(), nnodes=nodes)
    stop_asked = {"at": None}

    def pass_on(*_):
        stop_asked["at"] = stop_asked["at"] or time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal of a foreground run closed
        signal.signal(sig, pass_on)
    ending, leave_until, ended_at = None, None, None
    while child.poll() is None:
        time.sleep(POLL)
        try:
            status = run.status()
        except FileError:  # damaged from outside: rebuilt from the process we watch, and watched on
            status = run.update_status()
        beat = read_heartbeat(run, node) or {}
        if child.poll() is not None or head and status.get("watcher_pid") != os.getpid():
            continue  # it has ended, or the run was launched again: the status is another session's
        if status.get("state") not in ACTIVE:  # it has said how it ended (or another machine's watcher ended it)
            ended_at = ended_at or time.monotonic()
            if machine is not None and time.monotonic() - ended_at > stop_grace(beat):
                say(run, f"the run has ended, and its processes{on_machine(machine)} had not exited "
                         f"{stop_grace(beat):.0f} s later: killed")  # frozen, say, while another machine ended it
                kill_tree(child.pid)
            continue
        if status.get("stop_requested") and stop_asked["at"] is None:
            stop_asked["at"] = time.monotonic()  # `core stop` signals the training process itself
        silent = time.time() - number(beat.get("time")) if "time" in beat else 0.0
        limit = stall_limit(beat, configured_limit)
        if stop_asked["at"] is not None and beat.get("phase") in ("starting", "waiting", "joining"):
            ending = Ending({"state": "stopped"}, "stopped before it started training")  # nothing to save
        elif stop_asked["at"] is not None and time.monotonic() - stop_asked["at"] > stop_grace(beat):
            ending = stopped_by_force(run, beat, machine)
        elif limit is not None and silent > limit:
            if frozen_elsewhere(run, node, nodes, beat) is not None and \
                    time.monotonic() < (leave_until := leave_until or time.monotonic() + limit):
                continue  # ours only wait for a frozen machine: its watcher ends it, or we do after one more limit
            ending = stalled(run, beat, silent, limit, machine)
        else:
            leave_until = None
        if ending is not None:
            end_run(run, ending.fields | {"ended": time.time(), "waiting_for": None})  # before the kill: no death
            say(run, ending.message)
            kill_tree(child.pid)
            child.wait()
            return 0 if ending.fields["state"] == "stopped" else 1
    try:
        status = run.status()  # a training process that died without a word is marked failed now, not when read
    except FileError:
        status = run.update_status()
    ours = status.get("watcher_pid") == os.getpid() and status.get("pid") in (None, os.getpid(), child.pid)
    if ours and status.get("state") in ACTIVE:
        run.update_status(**ended_by_death(status, child.returncode))  # it died before it could say it was running
    elif ours and status.get("error") == death_text(status.get("pid"), None) and child.returncode < 0:
        run.update_status(error=death_text(status.get("pid"), child.returncode))  # a reader saw it first: say more
    return child.returncode


def frozen_elsewhere(run: Run, node: int, nodes: int, beat: dict) -> int | None:
    """Another machine of the run whose processes are frozen while ours still beat: ours wait for it."""
    if nodes < 2 or frozen(beat):
        return None
    return next((n for n in range(nodes) if n != node and frozen(read_heartbeat(run, n))), None)


def end_run(run: Run, fields: dict) -> None:
    """Write how the watcher ended the run, unless it has ended already: on a run across machines, another
    machine's watcher may have ended it a moment before, and the first cause stands."""
    run.update_status(only_while_active=True, **fields)


def on_machine(node: int | None) -> str:
    """" on node K (host)" for a machine of a run across machines; nothing for a run on one."""
    return "" if node is None else f" on node {node} ({socket.gethostname()})"


def stalled(run: Run, beat: dict, silent: float, limit: float, machine: int | None = None) -> Ending:
    error = (f"stalled: no progress for {silent:.0f} s{on_machine(machine)} {where_text(beat)} (limit {limit:.0f} s); "
             f"the {'process was' if machine is None else 'processes there were'} killed and "
             f"{'its device' if machine is None else 'their devices'} freed. {stall_advice(beat)}; a resume starts "
             f"{resume_point(run)}")
    stall = {k: beat.get(k) for k in ("phase", "epoch", "step")} | {"seconds": round(silent, 1), "limit": limit}
    stall |= {"node": machine} if machine is not None else {}
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


def stopped_by_force(run: Run, beat: dict, machine: int | None = None) -> Ending:
    message = (f"stopped: the training process{on_machine(machine)} did not stop within {stop_grace(beat):.0f} s of "
               f"the request ({where_text(beat)}) and was killed; a resume starts {resume_point(run)}")
    return Ending({"state": "stopped", "forced": True}, message)


# ---- the training process's side: never unwatched ---------------------------------------------------------


def watched_by(run: Run, watcher: int | None = None) -> None:
    """Called first thing by a training process a watcher started: when the watcher dies, save and stop (the
    StopFlag's SIGTERM), and end for good if that takes longer than the stop grace. Without a watcher (a
    process started otherwise), nothing. A torchrun worker passes its parent, the torchrun agent of its
    machine, which its machine's watcher watches: no worker outlives its machine's agent."""
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
    machine = this_node() if NODE_ENV in os.environ else None
    say(run, f"stopping: its watcher (pid {watcher}{on_machine(machine)}) is gone, and no run trains unwatched; "
             f"resume it to continue")
    os.kill(os.getpid(), signal.SIGTERM)  # the StopFlag: finish the step, save, stop
    grace = stop_grace(read_heartbeat(run, this_node()))
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
