"""How far a run has got and how long it will take, from its metrics lines and its heartbeat.

Metrics lines come in two kinds (see core.engine.loop): "step" lines every log_every steps and at least every
few seconds, and "epoch" lines at the end of each epoch. A run resumed after a crash replays the steps after
its last checkpoint, so the file may hold lines of a path the run no longer took: `history` keeps the run's
own path. The heartbeat (core.runs.watch) says what an active run's process is doing now, step by step: it
is fresher than the last line, and says so before there is any line at all (loading data, warming up).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.data.sources import image_counts
from core.design.config import TrainConfig
from core.runs.speeds import epoch_seconds


STEP_COLUMNS = ["epoch", "step", "train_loss", "lr", "images_per_s", "elapsed"]
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr",
                 "images_per_s", "elapsed"]
STEPPING = ("warming up", "training", "evaluating", "saving")  # heartbeat phases that say where in an epoch it is


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
    epochs: int                  # epochs to train (with a time limit: those its schedule is drawn over)
    images_per_s: float | None   # the latest training speed
    elapsed_s: float             # training time so far
    eta_s: float | None          # time left at the recent pace; None until there is a pace
    phase: str | None = None     # what the process does now (its heartbeat), while the run is active
    step: int | None = None      # steps done into the current epoch, while it trains
    steps_per_epoch: int | None = None
    time_limit: float = 0.0      # seconds of training instead of the epochs (0: the epochs)
    trained_s: float = 0.0       # of those, done

    @property
    def fraction(self) -> float:
        if self.time_limit:
            return min(1.0, self.trained_s / self.time_limit)
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0


def images_per_epoch(train: TrainConfig, data: str | None) -> tuple[int, int]:
    """(training images, evaluated images) an epoch goes through, before a line says so: the data's size,
    less a validation split, which is what is evaluated then."""
    train_images, test_images = image_counts(data)
    held_out = round(train_images * train.val_fraction)
    return train_images - held_out, held_out or test_images


def steps_per_epoch(path: list[dict], train: TrainConfig, data: str | None) -> int:
    """From the lines (global step over epochs), else from the data's size and the batch."""
    line = next((r for r in reversed(path) if r.get("epoch", 0) > 0 and r.get("step")), None)
    if line is not None:
        return max(1, round(line["step"] / line["epoch"]))
    images = images_per_epoch(train, data)[0]
    return max(1, images // max(1, min(train.batch_size, images)))


def progress(rows: list[dict], train: TrainConfig, data: str | None = None, beat: dict | None = None,
             window: float = 1.0) -> Progress:
    """Where a run stands, and how long it has left.

    `beat`: the heartbeat of an active run (None for one that is not), which places it step by step between
    lines. The time left: past the first epoch, the pace over the last `window` epochs, evaluation included;
    within the first, an epoch's training and evaluation at the speed of its steps (the heartbeat's median step
    time, else the images/s of the first line). A time-limited run has its limit's rest left."""
    path = [r for r in history(rows) if "epoch" in r and "elapsed" in r]
    per_epoch = steps_per_epoch(path, train, data)
    batch = min(train.batch_size, images_per_epoch(train, data)[0])
    last = path[-1] if path else {"epoch": 0.0, "elapsed": 0.0}
    epoch, step = last["epoch"], None
    phase = beat.get("phase") if beat else None
    if phase in STEPPING and isinstance(beat.get("epoch"), int):
        step = min(beat.get("step") or 0, per_epoch)
        epoch = max(epoch, beat["epoch"] + step / per_epoch)
    speed = next((r["images_per_s"] for r in reversed(path) if r.get("images_per_s")), None)
    if beat and beat.get("step_time") and phase == "training":
        speed = batch / beat["step_time"]  # the median of the recent steps: warm-up and pauses left out
    trained = trained_time(path)
    if beat and beat.get("step_time") and step is not None:  # the steps since the last line, at their pace: a
        trained += max(0.0, epoch - last["epoch"]) * per_epoch * beat["step_time"]  # budget read "0 s" at step 3

    if train.time_limit:
        eta = max(0.0, train.time_limit - trained) if path else None
    else:
        left = max(0.0, train.epochs - epoch)
        first = next((r for r in path if r["epoch"] >= last["epoch"] - window), last)
        span, took = last["epoch"] - first["epoch"], last["elapsed"] - first["elapsed"]
        evaluated = any(r.get("kind") == "epoch" for r in path if r["epoch"] >= first["epoch"])
        if span > 0 and took > 0 and evaluated:
            eta = left * took / span
        elif speed:
            eta = left * epoch_seconds(speed, per_epoch * batch, images_per_epoch(train, data)[1])
        else:
            eta = None
    return Progress(epoch, train.epochs, speed, last["elapsed"], eta, phase, step, per_epoch, train.time_limit,
                    trained)


def trained_time(path: list[dict]) -> float:
    """Seconds spent in training steps so far (what a time limit counts): the last epoch line's, plus the time
    since, or the time of the lines before there is one."""
    if not path:
        return 0.0
    mark = next((r for r in reversed(path) if r.get("kind") == "epoch" and "trained" in r), None)
    if mark is None:
        return path[-1]["elapsed"]
    return mark["trained"] + max(0.0, path[-1]["elapsed"] - mark["elapsed"])
