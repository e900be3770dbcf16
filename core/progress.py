"""How far a run has got and how long it will take, from its metrics lines; and how fast this CPU trains a design.

Metrics lines come in two kinds (see core.train): "step" lines every log_every steps and "epoch" lines at
the end of each epoch. A run resumed after a crash replays the steps after its last checkpoint, so the
file may hold lines of a path the run no longer took: `history` keeps the run's own path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from core.config import RunConfig, TrainConfig
from core.spec import IMAGE_SIZE, IN_CHANNELS, ArchSpec

CIFAR10_TRAIN_IMAGES, CIFAR10_TEST_IMAGES = 50_000, 10_000
STEP_COLUMNS = ["epoch", "step", "train_loss", "lr", "images_per_s", "elapsed"]
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr",
                 "images_per_s", "elapsed"]
EVAL_COST = 1 / 3  # an evaluated image costs a forward pass: about a third of a training step's work


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


def epoch_seconds(images_per_s: float, train_images: int, eval_images: int) -> float:
    """An epoch's training and evaluation time at a training speed."""
    return (train_images + EVAL_COST * eval_images) / images_per_s


def duration_text(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 3 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def measure_cpu_speed(arch: ArchSpec, train: TrainConfig, seconds: float = 0.5, batch_size: int = 16) -> float:
    """Training images/s of `arch` on one CPU core, with `train`'s augmentation and precision, over a few
    steps on random images: an estimate for a page in a few seconds (`python -m core bench` measures).

    One core, because a training already running here keeps every core busy, and two processes whose
    thread pools spin on the same cores slow each other down many times over: one core is steady.
    """
    import torch

    from core.bench import time_steps
    from core.train import Trainer

    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(RunConfig(arch, dataclasses.replace(train, batch_size=batch_size, compile=False)), cpu)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch_size, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                               generator=generator)
        labels = torch.randint(0, arch.num_classes, (batch_size,), generator=generator)

        def step() -> int:
            trainer.step(images, labels, train.lr)
            return batch_size

        return time_steps(step, cpu, seconds)["images_per_s"]
    finally:
        torch.set_num_threads(threads)
