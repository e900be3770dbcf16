"""Exports in the background: `python -m core export RUN OUT.onnx --format onnx --progress JOB` as a process of its
own, so a page that starts one stays usable for the minute or more an export and its check take on a CPU.

The process writes where it is beside the model it makes, and the page reads that:

    OUT.onnx.job.json   {"state": "running" | "done" | "failed", "stage": what it does now, "fraction": 0-1,
                         "pid", "pid_start", "started", "ended", "error": why it failed,
                         "refused": {"drop", "allowed"} when int8 lost more accuracy than allowed}
    OUT.onnx.log        what the process printed

Like a run's process it starts detached (core.processes): in a session of its own, it outlives the page that
started it, and is reaped when it ends; a job whose process died without a word reads as failed.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.deploy.onnx_model import exported_file
from core.errors import StudioError
from core.files import PROJECT_DIR, FileError, read_object, update_json, write_json
from core.processes import process_alive, start_detached
from core.runs.run import Run


class JobError(StudioError):
    pass


def job_path(model: Path) -> Path:
    return model.with_name(model.name + ".job.json")


def job_log(model: Path) -> Path:
    return model.with_name(model.name + ".log")


def read_job(model: Path) -> dict | None:
    """The export job of `model`, or None when none was started; a running job whose process is gone is marked
    failed (and saved so)."""
    path = job_path(model)
    try:
        job = read_object(path, default=None)
    except FileError:
        return None  # written atomically: a damaged file is not ours to explain
    if job and job.get("state") == "running" and job.get("pid") and \
            not process_alive(job["pid"], job.get("pid_start")):
        job = update_json(path, lambda now: now | {"state": "failed", "ended": time.time(), "error": (
            f"the export process (pid {now.get('pid')}) ended without saying why: it was killed or crashed; "
            f"{job_log(model).name} beside the model has what it printed")} if now.get("state") == "running" else now)
    return job


def start_export(run: Run, precision: str, max_drop: float) -> dict:
    """Start exporting `run`'s best checkpoint as ONNX `precision` (fp32 or int8) to its exports folder, in a
    process of its own; returns the job as first written. Refuses while an export of the same file runs."""
    model = exported_file(run.require(), precision)
    job = read_job(model)
    if job is not None and job.get("state") == "running":
        raise JobError(f"ONNX {precision} of {run.name} is already being exported ({job.get('stage')})")
    model.parent.mkdir(parents=True, exist_ok=True)
    job = {"state": "running", "stage": "starting", "fraction": 0.0, "precision": precision, "started": time.time(),
           "pid": None}
    write_json(job_path(model), job)
    command = [sys.executable, "-m", "core", "export", str(run.dir), str(model), "--format", "onnx",
               "--max-drop", repr(float(max_drop)), "--progress", str(job_path(model))]
    started = start_detached(command + (["--int8"] if precision == "int8" else []), job_log(model), cwd=PROJECT_DIR)
    return update_json(job_path(model), lambda now: now | {"pid": started.pid, "pid_start": started.start})


def run_job(path: Path, work: Callable[[Callable[[str, float], None]], dict]) -> dict:
    """The job's side, in the export process: `work(on_stage)` with on_stage writing each stage to `path`, then
    the outcome. A failure is recorded (with the numbers of a refused int8) and raised on."""
    def on_stage(stage: str, fraction: float) -> None:
        update_json(path, lambda job: job | {"stage": stage, "fraction": fraction})

    try:
        result = work(on_stage)
    except Exception as e:  # a bug too: the page says it failed at once, and the log has the traceback
        error = str(e) if isinstance(e, StudioError) else f"{type(e).__name__}: {e}"
        refused = getattr(e, "refused", None)
        update_json(path, lambda job: job | {"state": "failed", "ended": time.time(), "error": error,
                                             "refused": refused})
        raise
    update_json(path, lambda job: job | {"state": "done", "stage": "done", "fraction": 1.0, "ended": time.time()})
    return result
