"""How far a run has got and how long it will take, from its metrics lines.

Metrics lines come in two kinds (see core.engine.loop): "step" lines every log_every steps and "epoch" lines at
the end of each epoch. A run resumed after a crash replays the steps after its last checkpoint, so the
file may hold lines of a path the run no longer took: `history` keeps the run's own path.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


STEP_COLUMNS = ["epoch", "step", "train_loss", "lr", "images_per_s", "elapsed"]
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr",
                 "images_per_s", "elapsed"]


def _order(row: dict) -> tuple:
    return row.get("step", 0), row.get("kind") == "epoch"  # at the end of an epoch: its last step, then it


def history(rows: list[dict]) -> list[dict]:
    """The lines of the run's own path, in order: a line that goes back in steps (a resume from an earlier
    checkpoint) drops the lines it replaces."""
    kept: list[dict] = []
    for row in rows:
        while kept and _order(kept[-1]) >= _order(row):
            kept.pop()
        kept.append(row)
    return kept


def metric_frames(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(step lines, epoch lines) as tables, one column per field."""
    path = history(rows)
    steps = pd.DataFrame([r for r in path if r.get("kind") == "step"], columns=STEP_COLUMNS)
    epochs = pd.DataFrame([r for r in path if r.get("kind") == "epoch"], columns=EPOCH_COLUMNS)
    return steps, epochs


@dataclass(frozen=True)
class Progress:
    epoch: float                 # epochs done, with the done part of the current one
    epochs: int                  # epochs to train
    images_per_s: float | None   # the latest training speed logged
    elapsed_s: float             # training time so far
    eta_s: float | None          # training time left at the recent pace; None until there is a pace

    @property
    def fraction(self) -> float:
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0


def progress(rows: list[dict], epochs: int, batch_size: int, window: float = 1.0) -> Progress:
    """Where a run stands. The pace is taken over the last `window` epochs, so it includes the evaluation
    at an epoch's end once a run is past one, and follows a run that speeds up or slows down; with a single
    point so far, from the images/s of its steps."""
    path = [r for r in history(rows) if "epoch" in r and "elapsed" in r]
    if not path:
        return Progress(0.0, epochs, None, 0.0, None)
    last = path[-1]
    left = max(0.0, epochs - last["epoch"])
    speed = next((r["images_per_s"] for r in reversed(path) if r.get("images_per_s")), None)
    first = next(r for r in path if r["epoch"] >= last["epoch"] - window)
    span, took = last["epoch"] - first["epoch"], last["elapsed"] - first["elapsed"]
    if span > 0 and took > 0:
        eta = left * took / span
    elif speed and last.get("step") and last["epoch"] > 0:
        eta = left * (last["step"] / last["epoch"]) * batch_size / speed  # steps an epoch × batch ÷ images/s
    else:
        eta = None
    return Progress(last["epoch"], epochs, speed, last["elapsed"], eta)
