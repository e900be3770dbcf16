"""A study's best trial, onward: its run's design and recipe trained in full (for more epochs, on all of train,
scored on test), as the Search page's "Open in Design" and "Train it in full" take it."""
from __future__ import annotations

import time

from core.design.config import RunConfig, TrainConfig
from core.design.presets import get_preset
from core.runs.run import Run, create_run, launch

def full_epochs(space: dict) -> int:
    """The full training's epochs unless one asks for others: those of the recipe the study's trials start from."""
    return get_preset(space["recipe"])["train"].get("epochs", TrainConfig.epochs)


def in_full(run: Run, epochs: int) -> RunConfig:
    """A trial's run config for its full training: its design and recipe for `epochs`, with no validation split
    (it trains on all of train and scores on test)."""
    return run.config().replace_train(epochs=int(epochs), val_fraction=0.0)


def train_in_full(run: Run, epochs: int, device: str, origin: str) -> Run:
    """Launch the full training of a trial's run as a new run (RUN-full-HHMMSS) on `device`; returns it."""
    full = create_run(in_full(run, epochs), f"{run.name}-full-{time.strftime('%H%M%S')}", origin=origin)
    launch(full, device)
    return full
