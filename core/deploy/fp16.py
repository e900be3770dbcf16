"""A finished run made small to ship: its record and its best checkpoint alone, in fp16 (`python -m core
export RUN DEST`)."""
from __future__ import annotations

import os
import shutil

from core.files import write_json
from core.runs.run import Run, RunError


def export(run: Run, dest: Run, half: bool = True) -> Run:
    """A copy of a finished run to ship: its record, and the best checkpoint alone (fp16 by default),
    without optimizer state. It loads, lists, predicts and evaluates like any run."""
    from core.nn.checkpoint import load_checkpoint, save_checkpoint

    status = run.finished().status()
    if dest.dir.exists():
        raise RunError(f"{dest.dir} already exists; delete it first or pick another name")
    ckpt = load_checkpoint(run.checkpoints, "best")
    tmp = dest.dir.with_name(f".{dest.name}.export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in (run.config_path, run.metrics_path, run.results_path, run.log_path, run.record_path):
        if path.exists():
            shutil.copy2(path, tmp / path.name)
    write_json(tmp / run.status_path.name, status | {"pid": None, "exported_from": run.name, "half": half})
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "generation", "has_train_state")}
    save_checkpoint(tmp / "checkpoints", "best", ckpt.weights, meta, half=half)
    os.replace(tmp, dest.dir)  # the exported run appears whole or not at all
    return dest
