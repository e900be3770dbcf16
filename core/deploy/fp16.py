"""A finished run made small to ship: its record and its best checkpoint alone, in fp16 (`python -m core
export RUN DEST`)."""
from __future__ import annotations

from core.files import whole_folder
from core.runs.run import Run, RunError


def export(run: Run, dest: Run, half: bool = True) -> Run:
    """A copy of a finished run to ship: its record, and the best checkpoint alone (fp16 by default),
    without optimizer state. It loads, lists, predicts and evaluates like any run."""
    from core.nn.checkpoint import load_checkpoint, save_checkpoint

    status = run.finished().status()
    if dest.dir.exists():
        raise RunError(f"{dest.dir} already exists; delete it first or pick another name")
    ckpt = load_checkpoint(run.checkpoints, "best")
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "generation", "has_train_state")}
    with whole_folder(dest.dir) as staging:
        staged = run.copy_into(staging, status | {"pid": None, "exported_from": run.name, "half": half})
        save_checkpoint(staged.checkpoints, "best", ckpt.weights, meta, half=half)
    return dest
