"""The last design and training settings worked on, kept on disk: a reload or a new tab of the app picks up
where the user left off instead of the default preset.

    <cache>/last-design.json   {"arch": spec, "preset": name or null, "train": TrainConfig or null,
                                "settings_from": the recipe the settings started from, "saved": time,
                                "recipe": {"name", "train"} or null}

`recipe` is the training settings that came with the design itself (a search trial's, opened in Design): they
travel with it, so that a new tab trains the trial's design with the trial's settings, never another's.

Written atomically whenever the design or the settings change; a file that is damaged or no longer valid
reads as none (the app then starts from the default preset and says so).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from core.design.config import TrainConfig
from core.design.spec import ArchSpec, SpecError
from core.files import FileError, cache_dir, read_json, write_json


def last_design_path() -> Path:
    return cache_dir() / "last-design.json"


@dataclass(frozen=True)
class LastDesign:
    arch: ArchSpec
    preset: str | None
    train: TrainConfig | None   # None until the Train page has had settings
    settings_from: str | None   # the recipe (a preset's name) the settings started from; None: the defaults
    saved: float = 0.0          # when it was written
    recipe: tuple[str, TrainConfig] | None = None  # the design's own settings and their name (a search trial's)

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "preset": self.preset,
                "train": self.train.to_dict() if self.train else None, "settings_from": self.settings_from,
                "recipe": {"name": self.recipe[0], "train": self.recipe[1].to_dict()} if self.recipe else None}


def read_last() -> LastDesign | None:
    try:
        data = read_json(last_design_path(), default=None)
        if not isinstance(data, dict):
            return None
        train = TrainConfig.from_dict(data["train"]) if data.get("train") else None
        own = data.get("recipe")
        recipe = (str(own["name"]), TrainConfig.from_dict(own["train"])) if own else None
        return LastDesign(ArchSpec.from_dict(data["arch"]), data.get("preset"), train, data.get("settings_from"),
                          float(data.get("saved", 0.0)), recipe)
    except (FileError, SpecError, KeyError, TypeError, ValueError, AttributeError):
        return None


def save_last(last: LastDesign) -> None:
    path = last_design_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, last.to_dict() | {"saved": time.time()})
