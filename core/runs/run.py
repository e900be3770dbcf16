"""Runs on disk: the one place that knows the run-folder layout and a run's life cycle, and the one module that
writes into a run folder (Run's methods; the checkpoints' files are written by core.nn.checkpoint into the folder
Run.checkpoints names, as that format needs torch; tests/runs/test_run_folder.py keeps it so).

    runs/<name>/
        config.json         the RunConfig, with the parameter count
        status.json         state (queued/running/finished/failed/stopped/pruned), pid, device, times, error;
                            a search's trial also has `search` (its study and trial, see core.search)
        metrics.jsonl       one JSON line per epoch ("kind": "epoch") and every N steps ("kind": "step")
        train.log           what the training process printed
        heartbeat.json      the training process's phase, epoch and step, rewritten every second (core.runs.watch);
                            on a run across machines, machine K's (K > 0) is heartbeat-nodeK.json (Run.heartbeat_file)
        checkpoints/        last.* and best.* (see core.nn.checkpoint)
        results.json        per-class accuracy and confusion matrix, written at the end
        familiarity.json    per checkpoint, the score below which an image is out of distribution (core.deploy.predict)
        record.json         what made it: origin, command, commit, machine, libraries, seeds, data (core.runs.record)
        reproduces.json     for a run made by `core reproduce`: how it compares with the run it reproduces
        exports/            ONNX files for devices, each with its verification (see core.deploy.onnx_export)

A run trains in its own process and session (core.processes), so it outlives the app that launched it. Every
JSON file is replaced atomically; metrics lines are appended whole, and a reader skips a torn
last line. Whoever reads a status notices a run whose process is gone and marks it failed.

A folder can still be damaged from outside (a copy or sync cut short, a hand edit, a full disk elsewhere):
`scan_runs` checks every file of every run (`find_damage`) and lists a damaged run apart, with the file and
what is wrong, so that one bad run never hides the others; `repair` mends what can be rebuilt (a status from a
live process or the last checkpoint; a heartbeat, results, record, metrics line or export report set aside) and
`delete` removes one whatever state its files are in.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.design.budget import count
from core.design.config import RunConfig
from core.errors import StudioError
from core.files import (PROJECT_DIR, FileError, FileLock, append_line, json_problem, locked, read_json, read_object,
                        update_json, write_atomic, write_json)
from core.processes import process_alive, process_start_time, start_detached
from core.runs.record import write_import, write_origin, write_start


REPO_RUNS = PROJECT_DIR / "runs"


STATES = ("queued", "running", "finished", "failed", "stopped", "pruned")  # pruned: a search stopped a weak trial


ACTIVE = ("queued", "running")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RunError(StudioError):
    pass


@dataclass(frozen=True)
class Damage:
    """What is wrong with a run folder: the file (relative to the folder) and the problem, in words; `repair` says
    what `repair()` would do about it, or is None when only deleting the run (or restoring the file) helps."""
    file: str
    problem: str
    repair: str | None
    usable: bool = False  # the run can still be used: only a checkpoint's weights are damaged, and loading them
                          # says so (the other checkpoint may be intact)

    def __str__(self) -> str:
        return f"{self.file} is damaged: {self.problem}"

    def to_dict(self) -> dict:
        return {"file": self.file, "problem": self.problem, "repair": self.repair, "usable": self.usable}


class StopRequested(Exception):
    """A stop was asked for (SIGTERM) and whatever needed saving is saved."""


class StopFlag:
    """Turns SIGTERM/SIGINT/SIGHUP into a flag the training loop checks between steps. The training process sets it
    up first thing, before its slow imports, so that a Stop right after Launch finds it listening; SIGHUP (the
    terminal of a foreground run closed) saves and stops it too, instead of killing it mid-step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
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
    def named(cls, name: str, runs_dir: Path | None = None) -> Run:
        return cls((runs_dir or runs_root()) / check_name(name))

    @classmethod
    def at(cls, path: str | Path) -> Run:
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

    def heartbeat_file(self, node: int = 0) -> Path:
        """The heartbeat of machine `node` of a run (its launcher's --node-rank): the first machine's is a one-machine
        run's; every other machine has its own, since machines that share the folder must never write one file."""
        return self.dir / f"heartbeat-node{node}.json" if node else self.heartbeat_path

    def heartbeat_files(self) -> list[Path]:
        """Every heartbeat the run's machines may have written (heartbeat_file): the first's, then those present."""
        return [self.heartbeat_path, *sorted(self.dir.glob("heartbeat-node*.json"))]

    checkpoints = property(lambda self: self.dir / "checkpoints")
    results_path = property(lambda self: self.dir / "results.json")
    familiarity_path = property(lambda self: self.dir / "familiarity.json")
    exports = property(lambda self: self.dir / "exports")
    record_path = property(lambda self: self.dir / "record.json")
    reproduction_path = property(lambda self: self.dir / "reproduces.json")

    def exists(self) -> bool:
        return self.config_path.exists()

    def require(self) -> Run:
        if not self.exists():
            raise RunError(f"{self.dir}: no such run (no config.json there); `python -m core runs` lists the runs")
        return self

    def finished(self) -> Run:
        """This run, when it has finished; else a RunError: an export takes only a finished run."""
        state = self.require().status().get("state")
        if state != "finished":
            raise RunError(f"{self.name} is {state}; only a finished run can be exported")
        return self

    def intact(self) -> Run:
        """This run, when its files read well (find_damage; damaged weights of a checkpoint are said by whoever
        loads them); else a RunError naming the damaged file and what to do: for the commands that read a run
        (evaluate, export, report, resume)."""
        if (damage := find_damage(self.require())) is not None and not damage.usable:
            fix = f"python -m core repair {self.dir}" if damage.repair else f"restore it, or python -m core delete " \
                                                                           f"{self.dir} --yes"
            raise RunError(f"{self.name}: {damage}; {fix} (the Runs page offers the same)")
        return self

    # -- config --
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_object(self.require().config_path))

    # -- status --
    def status(self) -> dict:
        """The status, with a run whose process has died turned into `failed` (and saved so), or `stopped`
        when a stop was asked for: the signal may have come before the process could listen. A damaged
        status.json raises FileError (scan_runs lists such a run apart)."""
        status = read_object(self.status_path, default={"state": "failed", "error": "status.json is missing"})
        if died(status):
            status = update_json(self.status_path, lambda now: now | ended_by_death(now) if died(now) else now)
        return status

    def update_status(self, only_while_active: bool = False, **fields) -> dict:
        """Set some fields of status.json. The launcher and the training process both write it: each change
        is a read-change-write under the file's lock, so that neither undoes the other's. A status damaged from
        outside while the run lives is rebuilt first (rebuilt_status), so that the run goes on and says how.
        `only_while_active`: a run that has ended keeps its status (of two machines' watchers, the first to end a
        run says how)."""
        def change(status: dict) -> dict:
            return status | fields if not only_while_active or status.get("state") in ACTIVE else status
        try:
            return update_json(self.status_path, change)
        except FileError as e:
            with locked(self.status_path):
                status = rebuilt_status(self, str(e)) | fields
                write_json(self.status_path, status)
                return status

    # -- metrics --
    def metrics(self) -> list[dict]:
        rows = []
        with contextlib.suppress(FileNotFoundError), open(self.metrics_path) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict):
                        rows.append(row)
        return rows

    def checkpoint_epoch(self, meta: dict) -> float | None:
        """The epoch a checkpoint was saved at as epochs trained (24.5), from the epoch line of its evaluation (the
        same elapsed time); its meta alone has the whole epochs before it (24)."""
        for line in reversed(self.metrics()):
            if (line.get("kind") == "epoch" and meta.get("elapsed") is not None
                    and line.get("elapsed") == meta["elapsed"]):
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
        status, cfg_raw = self.status(), read_object(self.config_path, default={})
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

    # -- the folder's files, written: the training process, imports, exports and the watcher all write here --
    # (the status: update_status above; checkpoints: core.nn.checkpoint writes them into `checkpoints`, which
    # needs torch, which this module never imports)
    def save_config(self, cfg: RunConfig) -> None:
        """The config from now on (a resume with more or fewer epochs); the parameter count stays."""
        update_json(self.config_path, lambda saved: cfg.to_dict() | {"params": saved["params"]})

    def append_metrics(self, line: dict) -> None:
        """One metrics line, appended whole; a full disk fails the run with what to do."""
        try:
            append_line(self.metrics_path, line)
        except OSError as e:
            raise RunError(f"cannot write {self.metrics_path} ({e.strerror}); free disk space, then resume") from None

    def write_results(self, results: dict) -> None:
        """The final evaluation: per-class accuracy and confusion matrix (RESULT_KEYS)."""
        write_json(self.results_path, results)

    def log(self, message: str) -> str:
        """A line in train.log, with the time; returns the line."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with open(self.log_path, "a") as f:
            f.write(line + "\n")
        return line

    def write_heartbeat(self, beat: dict, node: int = 0) -> None:
        write_json(self.heartbeat_file(node), beat)

    def record_start(self, torch_facts: dict, world_size: int, seed: int, data: str) -> dict:
        """A training session's facts in record.json (core.runs.record.write_start)."""
        return write_start(self.record_path, torch_facts, world_size, seed, data)

    def record_import(self, torch_facts: dict, weights_sha256: str, trained_elsewhere: dict | None = None) -> dict:
        """An imported run's record: who imported it, the weights' sha256, and where they trained if known."""
        record = write_import(self.record_path, torch_facts, weights_sha256)
        if trained_elsewhere:
            record = update_json(self.record_path, lambda now: now | {"trained_elsewhere": trained_elsewhere})
        return record

    def write_reproduction(self, comparison: dict) -> None:
        write_json(self.reproduction_path, comparison)

    def keep_familiarity(self, tag: str, thresholds: dict) -> None:
        """A checkpoint's out-of-distribution thresholds, kept beside the others (core.deploy.predict)."""
        update_json(self.familiarity_path, lambda kept: kept | {tag: thresholds})

    def forget_familiarity(self) -> None:
        """Drop a damaged familiarity.json: it is measured again."""
        self.familiarity_path.unlink(missing_ok=True)

    def checkpoint_file(self, tag: str) -> Path:
        """The record of checkpoint `tag` (best, last): it exists once the checkpoint is whole."""
        return self.checkpoints / f"{tag}.json"

    def has_checkpoint(self, tag: str) -> bool:
        return self.checkpoint_file(tag).exists()

    def checkpoint_meta(self, tag: str) -> dict | None:
        """Checkpoint `tag`'s record, read as plain JSON (no torch); None when there is none."""
        return read_json(self.checkpoint_file(tag), default=None)

    def copy_into(self, folder: Path, status: dict) -> Run:
        """A copy of this run (config, metrics, results, log, record; no checkpoints) with `status`, in `folder` (an
        export's staging folder: it adds its checkpoint there)."""
        for path in (self.config_path, self.metrics_path, self.results_path, self.log_path, self.record_path):
            if path.exists():
                shutil.copy2(path, folder / path.name)
        copy = Run(folder)
        write_json(copy.status_path, status)
        return copy

    def export_file(self, name: str) -> Path:
        """A file of the exports folder: the ONNX files the app makes (core.deploy.onnx_model)."""
        return self.exports / name


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
    if status.get("imported_from") and not run.has_checkpoint("last"):
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


def ended_by_death(status: dict, exit_code: int | None = None) -> dict:
    """A run whose training process is gone without a word: stopped if a stop was asked for, else failed, with
    what its exit code says when its watcher saw it (a reader sees only that the pid is gone)."""
    if status.get("stop_requested"):
        return {"state": "stopped", "ended": time.time(), "waiting_for": None}
    return {"state": "failed", "ended": time.time(), "waiting_for": None,
            "error": death_text(status.get("pid"), exit_code)}


def death_text(pid: int | None, exit_code: int | None) -> str:
    process = f"the training process (pid {pid})"
    if exit_code == -signal.SIGKILL:  # what Linux's out-of-memory killer sends: nothing in the process sees it
        return (f"{process} was killed by SIGKILL without saying why: on Linux most often by the kernel when memory "
                f"ran out (its log, `dmesg`, then says 'Out of memory'), else by `kill -9`; resume to continue from "
                f"the last checkpoint, with a smaller batch if memory ran out")
    if exit_code is not None and exit_code < 0:
        return (f"{process} was killed by {signal.Signals(-exit_code).name} without saying why (a crash in native "
                f"code, or another program); resume to continue from the last checkpoint")
    return (f"{process} ended without saying why: it was killed, crashed, or the machine restarted; resume to "
            f"continue from the last checkpoint")


def all_runs(runs_dir: Path | None = None) -> list[Run]:
    """Every run folder (one with a config.json), damaged or not, newest first."""
    root = runs_dir or runs_root()
    if not root.is_dir():
        return []

    def newest(run: Run) -> float:
        with contextlib.suppress(OSError):
            return run.status_path.stat().st_mtime
        return 0.0

    return sorted((Run(p) for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name) and
                   (p / "config.json").exists()), key=newest, reverse=True)


def scan_runs(runs_dir: Path | None = None) -> tuple[list[Run], list[tuple[Run, Damage]]]:
    """The runs that can be used, and the damaged ones with what is wrong with each; both newest first. A run whose
    only damage is a checkpoint's weights (Damage.usable) is in both."""
    usable, damaged = [], []
    for run in all_runs(runs_dir):
        damage = find_damage(run)
        if damage is None or damage.usable:
            usable.append(run)
        if damage is not None:
            damaged.append((run, damage))
    return usable, damaged


def list_runs(runs_dir: Path | None = None) -> list[Run]:
    """The runs that can be used, newest first; whoever shows runs shows scan_runs's damaged ones too."""
    return scan_runs(runs_dir)[0]


# ---- damage: found, repaired --------------------------------------------------------------------


SET_ASIDE = "the file is set aside (renamed *.damaged) and the run used without it"
RESULT_KEYS = {"accuracy": (int, float), "classes": list, "confusion": list, "per_class_accuracy": dict,
               "eval_split": str}
_checked: dict[tuple, Damage | None] = {}  # what _file_damage found, by file, size and time of change


def find_damage(run: Run) -> Damage | None:
    """The first damaged file of `run` and what is wrong with it, or None when every file reads well. What a file
    was found to be is kept until it changes, so listing runs again costs a stat per file."""
    files = [run.config_path, run.status_path, run.results_path, run.record_path, *run.heartbeat_files(),
             run.metrics_path, *sorted(run.exports.glob("*.json")), *sorted(run.checkpoints.glob("*.json")),
             *sorted(run.checkpoints.glob("*.safetensors"))]
    for path in files:
        key = (str(path), _stamp(path))
        if key not in _checked:
            if len(_checked) > 10_000:
                _checked.clear()
            _checked[key] = _file_damage(run, path)
        if _checked[key] is not None:
            return _checked[key]
    return None


def _stamp(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino


def _file_damage(run: Run, path: Path) -> Damage | None:
    name = path.relative_to(run.dir).as_posix()
    try:
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        else:
            data = path.read_bytes()
            problem = _metrics_problem(data) if path == run.metrics_path else \
                json_problem(data) or _content_problem(run, path, json.loads(data))
    except FileNotFoundError:
        return None if path != run.config_path else Damage(name, "missing", None)
    except OSError as e:
        return Damage(name, f"unreadable ({e.strerror})", None)
    if problem is None:
        return None
    return Damage(name, problem, _repair_text(run, path), usable=path.suffix == ".safetensors")


def _content_problem(run: Run, path: Path, obj: dict) -> str | None:
    """What a well-formed JSON object lacks that its readers need."""
    if path == run.config_path:
        try:
            RunConfig.from_dict(obj)
        except (StudioError, TypeError, ValueError, KeyError, AttributeError) as e:
            return f"not a run config ({e})"
        return None if isinstance(obj.get("params"), int) else "no parameter count (params)"
    if path == run.status_path and obj.get("state") not in STATES:
        return f"state {obj.get('state')!r} is none of {', '.join(STATES)}"
    if path == run.results_path:
        wrong = [key for key, kind in RESULT_KEYS.items() if not isinstance(obj.get(key), kind)]
        return f"{', '.join(wrong)} missing or of the wrong type" if wrong else None
    if path.parent == run.checkpoints and not isinstance(obj.get("generation"), str):
        return "no generation: not a checkpoint's record"
    return None


def _metrics_problem(data: bytes) -> str | None:
    """A torn last line is what a crash leaves (readers skip it); any other line that is not a JSON object, or an
    epoch without its accuracy, is damage."""
    lines = data.split(b"\n")
    whole = lines[:-1]  # the part after the last newline is a torn line, or nothing
    for number, line in enumerate(whole, 1):
        if not line.strip():
            continue
        if problem := json_problem(line):
            return f"line {number} is {problem}"
        row = json.loads(line)
        if row.get("kind") == "epoch" and not isinstance(row.get("eval_acc"), (int, float)):
            return f"line {number} is an epoch without its accuracy (eval_acc)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A weights file's header read without torch (and without reading the weights): its length, its JSON, and
    tensors that end within the file."""
    with open(path, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        if length < 8:
            return "empty" if not length else "cut short"
        size = int.from_bytes(f.read(8), "little")
        if size > length - 8:
            return "cut short, or not a safetensors file"
        data = f.read(size)
    if problem := json_problem(data):
        return f"its header is {problem}"
    ends = [offsets[1] for key, info in json.loads(data).items() if key != "__metadata__"
            for offsets in [info.get("data_offsets") if isinstance(info, dict) else None]
            if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int)]
    return "cut short: its tensors end past the file's end" if max(ends, default=0) > length - 8 - size else None


def _repair_text(run: Run, path: Path) -> str | None:
    if path == run.status_path:
        return "rebuild the status from a live training process or the last checkpoint"
    if path in run.heartbeat_files():
        return "remove the heartbeat: a live training process writes it again within a second"
    if path == run.metrics_path:
        return "keep the metrics lines that read well; the whole file is kept as metrics.jsonl.damaged"
    if path in (run.results_path, run.record_path) or path.parent == run.exports:
        return SET_ASIDE
    return None  # the config defines the run; a checkpoint cannot be rebuilt: restore it, or delete the run


def repair(run: Run) -> list[str]:
    """Mend every damaged file of `run` that can be mended (Damage.repair says how); returns the damage mended.
    Raises RunError, leaving the run as it was, when a damaged file cannot be mended."""
    done = []
    with run_lock(run, "repair"):
        while (damage := find_damage(run)) is not None:
            path = run.dir / damage.file
            if damage.repair is None or str(damage) in done:
                raise RunError(f"{run.name}: {damage}; it cannot be rebuilt: restore {damage.file} from a copy, "
                               f"or delete the run")
            if path == run.status_path:
                write_json(path, rebuilt_status(run, damage.problem))
            elif path in run.heartbeat_files():
                path.unlink()
            elif path == run.metrics_path:
                os.replace(path, path.with_name(path.name + ".damaged"))
                rows = [json.loads(line) for line in path.with_name(path.name + ".damaged").read_bytes().split(b"\n")
                        if line.strip() and json_problem(line) is None]
                write_atomic_lines(path, [row for row in rows if row.get("kind") != "epoch" or
                                          isinstance(row.get("eval_acc"), (int, float))])
            else:
                os.replace(path, path.with_name(path.name + ".damaged"))
            done.append(str(damage))
    return done


def write_atomic_lines(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


def rebuilt_status(run: Run, problem: str) -> dict:
    """A status for a run whose status.json is damaged: running, when a training process of this run is alive
    (its pid is then known again); else finished, when it has results; else stopped, to resume from its last
    checkpoint (or from the start)."""
    note = f"status.json was damaged ({problem}) and rebuilt on {time.strftime('%Y-%m-%d %H:%M')}"
    created = run.config_path.stat().st_mtime
    if (pid := training_pid(run)) is not None:
        watcher = None
        with contextlib.suppress(psutil.Error):  # its watcher, if it has one, goes on watching it
            parent = psutil.Process(pid).parent()
            watcher = parent.pid if parent is not None and "train" in parent.cmdline() else None
        return {"state": "running", "pid": pid, "pid_start": process_start_time(pid), "created": created,
                "watcher_pid": watcher, "rebuilt": note}
    if run.results_path.exists() and _file_damage(run, run.results_path) is None:
        return {"state": "finished", "pid": None, "created": created, "ended": run.results_path.stat().st_mtime,
                "rebuilt": note}
    return {"state": "stopped", "pid": None, "created": created, "ended": time.time(), "rebuilt": note,
            "error": f"{note}: resume it to continue from its last checkpoint"}


def training_pid(run: Run) -> int | None:
    """The pid of a live process training `run` on this machine (`core train --resume RUN`, the watched one
    rather than its watcher), found by its command line; None when there is none."""
    folder, found = run.dir.resolve(), []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = proc.info.get("cmdline") or []
        if "core" not in cmd or "--resume" not in cmd[:-1]:
            continue
        target = Path(proc.info.get("cwd") or PROJECT_DIR) / cmd[cmd.index("--resume") + 1]
        if target.resolve() == folder:
            found.append((("--watched" in cmd), proc.info["pid"]))
    return max(found)[1] if found else None


# ---- one change of a run's life at a time ---------------------------------------------------------------

LOCK_WAIT = 10.0  # seconds a launch, stop, repair or delete waits for another one of the same run to finish


@contextlib.contextmanager
def run_lock(run: Run, action: str):
    """Hold the run folder's lock while `action` (launch, stop, repair, delete) reads and changes the run: two
    launches, a stop and a resume, a delete and a launch of the same run, from the app or the CLI, take turns,
    and the one that comes second sees what the first did. The OS drops the lock with a killed process."""
    lock = FileLock(run.dir / ".run.lock")
    try:
        taken = lock.acquire(wait=LOCK_WAIT)
    except FileNotFoundError:
        raise RunError(f"{run.dir}: no such run (it was deleted)") from None
    if not taken:
        raise RunError(f"{run.name}: not done ({action}): another launch, stop, repair or delete of this run has "
                       f"held it for {LOCK_WAIT:.0f} s; try again in a moment")
    try:
        yield run.require()  # a delete that held the lock before may have taken the run away
    finally:
        lock.release()


def create_run(cfg: RunConfig, name: str, runs_dir: Path | None = None, origin: str | None = None) -> Run:
    """Make the run folder with its config, a queued status and the start of its record: `origin`, what asked
    for it (by default this process's command line). Refuses over-budget designs."""
    params = count(cfg.arch).params
    if params > cfg.budget and not cfg.allow_over_budget:
        raise RunError(f"this design has {params:,} parameters, {params - cfg.budget:,} over the budget of "
                       f"{cfg.budget:,}; shrink it (python -m core params --fit) or pass --allow-over-budget")
    run = Run.named(name, runs_dir)
    run.dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run.dir.mkdir()  # one of two launches of the same new name at the same moment makes it, the other stops here
    except FileExistsError:
        raise RunError(f"{run.dir} already exists; pick another name, or resume it with --resume {run.dir}") from None
    write_json(run.config_path, cfg.to_dict() | {"params": params})
    write_json(run.status_path, {"state": "queued", "created": time.time(), "pid": None})
    write_origin(run.record_path, origin)
    return run


def launch(run: Run, device: str = "auto", data: str | None = None, epochs: int | None = None,
           gpus: str | None = None, processes: list[str] = ()) -> int:
    """Start (or resume) training of `run` in a detached process; returns its pid. `processes` are
    `train`'s options for several processes (core.runs.queue.Launch.cli_args): then that process runs
    torchrun, whose processes train."""
    cmd = [sys.executable, "-m", "core", "train", "--resume", str(run.dir), "--device", device]
    if data:
        cmd += ["--data", data]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    cmd += (["--gpus", gpus] if gpus else []) + list(processes)
    with run_lock(run.require(), "launch"):
        claim(run)
        started = start_detached(cmd, run.log_path, cwd=PROJECT_DIR)
        run.update_status(pid=started.pid, pid_start=started.start)
    return started.pid


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

    with run_lock(run.require(), "stop"):
        where = run.status().get("host")  # a dead process is marked first: its pid is not ours any more
        if where not in (None, socket.gethostname()):
            raise RunError(f"{run.name} runs on {where}: stop it there (python -m core stop), or end the cluster "
                           f"job with a SIGTERM (scancel --signal=TERM --full)")
        status = update_json(run.status_path, request)
        if status.get("state") in ACTIVE:
            with contextlib.suppress(ProcessLookupError):
                os.kill(status["pid"], signal.SIGTERM)
    return status


def claim(run: Run, pid: int | None = None) -> None:
    """Make the run's status a new session's, queued: refused while another session of it is active. Called under
    run_lock (launch; a foreground `core train`, which is its own watcher, passes its pid), so that of two launches
    at the same moment the second finds the first's pid and is told so. The last session's watcher, if any, then
    leaves the status alone."""
    status = run.status()
    if pid is not None and status.get("pid") == pid:
        return  # launch claimed it for this watcher already; a stop asked for since then must stand
    if status.get("state") in ACTIVE and status.get("pid") is not None:
        raise RunError(f"{run.name} is already {status['state']} (pid {status['pid']}); stop it first")
    run.update_status(state="queued", pid=pid, pid_start=process_start_time(pid) if pid else None, watcher_pid=None,
                      error=None, waiting_for=None, stop_requested=False)


def begin(run: Run, device_request: str) -> None:
    """The training process's first word: its pid; raises StopRequested if a stop came before it."""
    status = run.update_status(pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                               device_request=device_request)
    if status.get("stop_requested"):
        raise StopRequested


def delete(run: Run) -> None:
    """Remove the run folder; refused while the run is active. A run whose status is damaged is refused while a
    process of it is alive on this machine, and removed otherwise."""
    with run_lock(run.require(), "delete"):
        try:
            status = run.status()
        except FileError:
            pid = training_pid(run)
            status = {"state": "running", "pid": pid} if pid is not None else {}
        if status.get("state") in ACTIVE:
            raise RunError(f"{run.name} is {status['state']}; stop it before deleting it")
        remove_folder(run)


def remove_folder(run: Run) -> None:
    """Delete the run folder, its lock held: first moved aside in one rename, so that an action waiting for the lock
    finds the run gone. Deleted in place, the folder would still be there, empty of its lock file, while that action
    polled: it would make the file anew, and the delete would fail half done ("Directory not empty")."""
    doomed = run.dir.with_name(f".{run.name}.deleting")  # hidden: never listed as a run
    shutil.rmtree(doomed, ignore_errors=True)  # what a killed delete left
    run.dir.rename(doomed)
    shutil.rmtree(doomed)
