"""Runs on disk: the one place that knows the run-folder layout and a run's life cycle.

    runs/<name>/
        config.json         the RunConfig, with the parameter count
        status.json         state (queued/running/finished/failed/stopped/pruned), pid, device, times, error;
                            a search's trial also has `search` (its study and trial, see core.search)
        metrics.jsonl       one JSON line per epoch ("kind": "epoch") and every N steps ("kind": "step")
        train.log           what the training process printed
        heartbeat.json      the training process's phase, epoch and step, rewritten every second (core.runs.watch)
        checkpoints/        last.* and best.* (see core.nn.checkpoint)
        results.json        per-class accuracy and confusion matrix, written at the end
        familiarity.json    per checkpoint, the score below which an image is out of distribution (core.deploy.predict)
        record.json         what made it: origin, command, commit, machine, libraries, seeds, data (core.runs.record)
        reproduces.json     for a run made by `core reproduce`: how it compares with the run it reproduces
        exports/            ONNX files for devices, each with its verification (see core.deploy.onnx_export)

A run trains in its own process and session, so it outlives the app that launched it. Every
JSON file is replaced atomically; metrics lines are appended whole, and a reader skips a torn
last line. Whoever reads a status notices a run whose process is gone and marks it failed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.design.budget import count
from core.design.config import RunConfig
from core.errors import StudioError
from core.files import PROJECT_DIR, read_json, update_json, write_json
from core.runs.record import write_origin


REPO_RUNS = PROJECT_DIR / "runs"


STATES = ("queued", "running", "finished", "failed", "stopped", "pruned")  # pruned: a search stopped a weak trial


ACTIVE = ("queued", "running")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RunError(StudioError):
    pass


class StopRequested(Exception):
    """A stop was asked for (SIGTERM) and whatever needed saving is saved."""


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the training loop checks between steps. The training process sets it
    up first thing, before its slow imports, so that a Stop right after Launch finds it listening."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, *_):
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


class PruneRequested(Exception):
    """A search's pruner ended this trial after `epoch` (its checkpoints are saved)."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


# ---- names and paths ------------------------------------------------------------------------


def runs_root() -> Path:
    """Where runs live: $RESNET_STUDIO_RUNS, else runs/ in the repo."""
    return Path(os.environ.get("RESNET_STUDIO_RUNS") or REPO_RUNS)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in (".", ".."):
        raise RunError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                       f"or digit (no slashes: a run always lives directly under runs/)")
    return name


@dataclass(frozen=True)
class Run:
    dir: Path

    @classmethod
    def named(cls, name: str, runs_dir: Path | None = None) -> "Run":
        return cls((runs_dir or runs_root()) / check_name(name))

    @classmethod
    def at(cls, path: str | Path) -> "Run":
        """A run given as a path like runs/NAME (as the CLI takes it) or as a bare name."""
        path = Path(path)
        if len(path.parts) == 1:
            return cls.named(path.name)
        check_name(path.name)
        return cls(path)

    @property
    def name(self) -> str:
        return self.dir.name

    config_path = property(lambda self: self.dir / "config.json")
    status_path = property(lambda self: self.dir / "status.json")
    metrics_path = property(lambda self: self.dir / "metrics.jsonl")
    log_path = property(lambda self: self.dir / "train.log")
    heartbeat_path = property(lambda self: self.dir / "heartbeat.json")
    checkpoints = property(lambda self: self.dir / "checkpoints")
    results_path = property(lambda self: self.dir / "results.json")
    familiarity_path = property(lambda self: self.dir / "familiarity.json")
    exports = property(lambda self: self.dir / "exports")
    record_path = property(lambda self: self.dir / "record.json")
    reproduction_path = property(lambda self: self.dir / "reproduces.json")

    def exists(self) -> bool:
        return self.config_path.exists()

    def require(self) -> "Run":
        if not self.exists():
            raise RunError(f"{self.dir}: no such run (no config.json there); `python -m core runs` lists the runs")
        return self

    # -- config --
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.require().config_path))

    # -- status --
    def status(self) -> dict:
        """The status, with a run whose process has died turned into `failed` (and saved so), or `stopped`
        when a stop was asked for: the signal may have come before the process could listen."""
        status = read_json(self.status_path, default={"state": "failed", "error": "status.json is missing"})
        if died(status):
            status = update_json(self.status_path, lambda now: now | ended_by_death(now) if died(now) else now)
        return status

    def update_status(self, **fields) -> dict:
        """Set some fields of status.json. The launcher and the training process both write it: each change
        is a read-change-write under the file's lock, so that neither undoes the other's."""
        return update_json(self.status_path, lambda status: status | fields)

    # -- metrics --
    def metrics(self) -> list[dict]:
        rows = []
        with contextlib.suppress(FileNotFoundError), open(self.metrics_path) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
        return rows

    def checkpoint_epoch(self, meta: dict) -> float | None:
        """The epoch a checkpoint was saved at as epochs trained (24.5), from the epoch line of its evaluation (the
        same elapsed time); its meta alone has the whole epochs before it (24)."""
        for line in reversed(self.metrics()):
            if line.get("kind") == "epoch" and meta.get("elapsed") is not None and line.get("elapsed") == meta["elapsed"]:
                return line["epoch"]
        return meta.get("epoch")

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200 * lines))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def summary(self) -> dict:
        """One row of the runs table. `epochs_done` is epochs_trained to one decimal; `time_limit` (seconds, or
        None) says its length was a time budget, not `epochs`."""
        status, cfg_raw = self.status(), read_json(self.config_path, default={})
        epochs = [m for m in self.metrics() if m.get("kind") == "epoch"]
        best = max((m["eval_acc"] for m in epochs), default=None)
        train = cfg_raw.get("train", {})
        return {"name": self.name, "state": status.get("state"), "params": cfg_raw.get("params"),
                "preset": cfg_raw.get("preset"), "best_acc": best,
                "epochs_done": epochs_trained(status, epochs), "epochs": train.get("epochs"),
                "time_limit": train.get("time_limit") or None,
                "elapsed": epochs[-1]["elapsed"] if epochs else None, "device": status.get("device"),
                "world_size": status.get("world_size") or 1,
                "created": status.get("created"), "error": status.get("error"), "data": cfg_raw.get("data"),
                "imported_from": status.get("imported_from"),
                "search": (status.get("search") or {}).get("study")}


def epochs_trained(status: dict, epoch_lines: list[dict]) -> float | int:
    """How many epochs a run has trained, to one decimal (24.5: a time budget ends within an epoch; 30: whole).
    The training process writes it to the status at each epoch's end; the count of epoch lines is not it (a run
    evaluated every few epochs has fewer), so older runs without it take the last epoch line's epoch."""
    done = status.get("epoch")
    if not isinstance(done, (int, float)):
        done = epoch_lines[-1].get("epoch", len(epoch_lines)) if epoch_lines else 0
    done = round(float(done), 1)
    return int(done) if done == int(done) else done


def resume_problem(run: Run) -> str | None:
    """Why `run` cannot be resumed or trained longer, or None when it can. An imported run holds weights and
    no training state (optimizer, schedule, epoch): a resume would train its design from scratch instead."""
    status = run.status()
    if status.get("imported_from") and not (run.checkpoints / "last.json").exists():
        return (f"{run.name} was imported from {Path(status['imported_from']).name}, not trained here: it has "
                f"weights but no training state (optimizer, schedule, epoch) to continue from. Train its design "
                f"anew as a new run instead")
    return None


def change_batch_size(run: Run, batch_size: int) -> None:
    """Resume `run` with another global batch (after running out of memory, say): its config says so from now on,
    and the training loop carries the saved position over to it (core.engine.loop)."""
    if batch_size == run.config().train.batch_size:
        return
    cfg = run.config().replace_train(batch_size=batch_size)  # checked as any config is
    update_json(run.config_path, lambda saved: saved | {"train": cfg.train.to_dict()})


def died(status: dict) -> bool:
    """Active, with a process that is gone. No pid yet: created and not launched, or launched and not yet
    started; nothing has died."""
    return status.get("state") in ACTIVE and status.get("pid") is not None and \
        status.get("host", socket.gethostname()) == socket.gethostname() and \
        not process_alive(status.get("pid"), status.get("pid_start"))  # judged on the machine of the process


def ended_by_death(status: dict) -> dict:
    if status.get("stop_requested"):
        return {"state": "stopped", "ended": time.time(), "waiting_for": None}
    return {"state": "failed", "ended": time.time(), "waiting_for": None,
            "error": (f"the training process (pid {status.get('pid')}) ended without saying why: it was killed, "
                      f"crashed, or the machine restarted; resume to continue from the last checkpoint")}


def list_runs(runs_dir: Path | None = None) -> list[Run]:
    root = runs_dir or runs_root()
    if not root.is_dir():
        return []
    return sorted((Run(p) for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name) and
                   (p / "config.json").exists()), key=lambda r: r.status_path.stat().st_mtime
                  if r.status_path.exists() else 0, reverse=True)


# ---- processes ----------------------------------------------------------------------------------


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, so a reused pid is not mistaken for our run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # state Z = zombie: dead, not yet reaped


def process_alive(pid, pid_start=None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if Path("/proc").is_dir():
        start = process_start_time(pid)
        return start is not None and (pid_start is None or start == pid_start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def create_run(cfg: RunConfig, name: str, runs_dir: Path | None = None, origin: str | None = None) -> Run:
    """Make the run folder with its config, a queued status and the start of its record: `origin`, what asked
    for it (by default this process's command line). Refuses over-budget designs."""
    params = count(cfg.arch).params
    if params > cfg.budget and not cfg.allow_over_budget:
        raise RunError(f"this design has {params:,} parameters, {params - cfg.budget:,} over the budget of "
                       f"{cfg.budget:,}; shrink it (python -m core params --fit) or pass --allow-over-budget")
    run = Run.named(name, runs_dir)
    if run.dir.exists():
        raise RunError(f"{run.dir} already exists; pick another name, or resume it with --resume {run.dir}")
    run.dir.mkdir(parents=True)
    write_json(run.config_path, cfg.to_dict() | {"params": params})
    write_json(run.status_path, {"state": "queued", "created": time.time(), "pid": None})
    write_origin(run.record_path, origin)
    return run


def launch(run: Run, device: str = "auto", data: str | None = None, epochs: int | None = None,
           gpus: str | None = None, processes: list[str] = ()) -> int:
    """Start (or resume) training of `run` in a detached process; returns its pid. `processes` are
    `train`'s options for several processes (core.runs.queue.Launch.cli_args): then that process runs
    torchrun, whose processes train."""
    status = run.require().status()
    if status.get("state") in ACTIVE and status.get("pid"):
        raise RunError(f"{run.name} is already {status['state']} (pid {status['pid']}); stop it first")
    cmd = [sys.executable, "-m", "core", "train", "--resume", str(run.dir), "--device", device]
    if data:
        cmd += ["--data", data]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    cmd += (["--gpus", gpus] if gpus else []) + list(processes)
    run.update_status(state="queued", pid=None, watcher_pid=None, error=None, waiting_for=None,
                      stop_requested=False)  # a new session: the last one's watcher leaves it alone
    with open(run.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=PROJECT_DIR)
    run.update_status(pid=proc.pid, pid_start=process_start_time(proc.pid))
    # reap it when it ends, so a finished child of a long-lived app does not linger as a zombie
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid


def stop(run: Run) -> dict:
    """Ask a run to stop: it finishes its step, saves a checkpoint and says `stopped`.

    The request is written down before the signal is sent: a process that has not started yet reads it
    when it does (`begin`), and one the signal ends before it listens is read as stopped, not failed.
    """
    def request(status: dict) -> dict:
        if status.get("state") not in ACTIVE:
            return status
        if status.get("pid") is None:  # not started: it will find the request and end at once
            return status | {"stop_requested": True, "state": "stopped", "ended": time.time(), "waiting_for": None}
        return status | {"stop_requested": True}

    where = run.require().status().get("host")  # a dead process is marked first: its pid is not ours any more
    if where not in (None, socket.gethostname()):
        raise RunError(f"{run.name} runs on {where}: stop it there (python -m core stop), or end the cluster "
                       f"job with a SIGTERM (scancel --signal=TERM --full)")
    status = update_json(run.status_path, request)
    if status.get("state") in ACTIVE:
        with contextlib.suppress(ProcessLookupError):
            os.kill(status["pid"], signal.SIGTERM)
    return status


def begin(run: Run, device_request: str) -> None:
    """The training process's first word: its pid; raises StopRequested if a stop came before it."""
    status = run.update_status(pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                               device_request=device_request)
    if status.get("stop_requested"):
        raise StopRequested


def delete(run: Run) -> None:
    status = run.require().status()
    if status.get("state") in ACTIVE:
        raise RunError(f"{run.name} is {status['state']}; stop it before deleting it")
    shutil.rmtree(run.dir)
