"""Search: find the most accurate design within the budget automatically, with Optuna.

A search space is plain JSON (`Space`): what to search (ranges or choices), the budget, and the fixed
settings of every trial. A study lives in an Optuna storage: by default a SQLite file under
runs/.search/, or any database URL (PostgreSQL) that workers on several machines share.

    worker (`python -m core search`)          trial (`python -m core train --resume`, one per run)
    asks Optuna for a trial, builds its   ->  trains like any run; after each epoch reports the
    design, rejects it if over budget,        validation accuracy and asks whether to prune; at the
    else makes a run folder and launches      end tells Optuna complete / pruned / failed; records
    it (same launch and device queue as       a heartbeat every few seconds while it lives
    any run), one trial per device

Faults. A trial's run folder is tagged with its study and trial (status.json `search`). A worker
relaunches the local run of a trial whose process died while Optuna still has it RUNNING (it
resumes from its last checkpoint: nothing is run twice or lost). Where no worker can see the run
(its machine is gone), Optuna's heartbeat marks the trial failed after GRACE_S and
RetryHeartbeatStaleTrialCallback queues it again, so another worker runs it.

The default storage is SQLite through Optuna's RDBStorage, not the JournalFileBackend: it is the
same storage class as PostgreSQL, so one code path serves both, and only RDBStorage has the
heartbeat that finds trials whose process died. Its writes are a few per epoch and per heartbeat,
which SQLite's file lock handles for the few processes of one machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from core.budget import BUDGET, count
from core.config import RunConfig, TrainConfig
from core.errors import StudioError
from core.files import locked, read_json, update_json
from core.presets import PRESETS, get_preset
from core.runs import (ACTIVE, PruneRequested, Run, create_run, launch, process_alive, process_start_time, runs_root,
                       stop as stop_run)
from core.spec import (BLOCKS_RANGE, CHANNELS_RANGE, DROPOUT_RANGE, IMAGE_SIZE, KERNEL_SIZES, SE_RATIO_RANGE,
                       STAGES_RANGE, ArchSpec, SpecError, check_bool, check_choice, check_float, check_int,
                       check_keys, conv_out)

# -- how workers and trials talk to the study: one visible place --
HEARTBEAT_S = 5       # a live trial records a heartbeat this often
GRACE_S = 30          # ... and is taken for dead (failed, then queued again) after this long without one
MAX_RELAUNCHES = 3    # a trial whose process keeps dying is failed after this many relaunches
POLL_S = 1.0          # how often a worker looks at its trials
MAX_REJECTED = 1000   # a worker gives up after this many over-budget samples in a row

OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "macs": "minimize"}
PRUNERS = ("median", "halving", "none")
STUDY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,55}$")  # + "-NNN" stays a valid run name
ARCH_RANGES = ("stages", "blocks", "width", "growth", "kernel_size", "se_ratio", "dropout")
TRAIN_RANGES = ("lr", "weight_decay", "batch_size", "augment", "label_smoothing", "ema_decay")
INT_RANGES = ("stages", "blocks", "width", "se_ratio", "batch_size")
GROWTH_RANGE = (0.5, 4.0)  # width of stage i = width * growth ** i


# the heartbeat that finds dead trials is "experimental" in Optuna, and meant for Study.optimize; we use it on
# purpose with ask-and-tell, beating from each trial's own process
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class SearchError(StudioError):
    pass


# ---- the space -------------------------------------------------------------------------------------

def _check_arch_value(where: str, name: str, value: Any) -> Any:
    checks = {"stages": lambda: check_int(where, value, *STAGES_RANGE),
              "blocks": lambda: check_int(where, value, *BLOCKS_RANGE),
              "width": lambda: check_int(where, value, *CHANNELS_RANGE),
              "growth": lambda: check_float(where, value, *GROWTH_RANGE),
              "kernel_size": lambda: check_choice(where, value, KERNEL_SIZES),
              "se_ratio": lambda: check_int(where, value, *SE_RATIO_RANGE),
              "dropout": lambda: check_float(where, value, *DROPOUT_RANGE)}
    return checks[name]()


def _check_value(where: str, name: str, value: Any) -> Any:
    """One value a setting may take, checked as the config checks it; the error names `where`."""
    if name in ARCH_RANGES:
        return _check_arch_value(where, name, value)
    try:
        checked = getattr(TrainConfig.from_dict({name: value}), name)
    except SpecError as e:
        raise SpecError(str(e).replace(f"train.{name}", where, 1)) from None
    return list(checked) if name == "augment" else checked


def _check_range(where: str, name: str, raw: Any) -> Any:
    """A fixed value, {"low", "high", "log"} or {"choices": [...]}; returned checked, as plain data."""
    if isinstance(raw, dict) and "choices" in raw:
        check_keys(where, raw, ("choices",))
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        return {"choices": [_check_value(f"{where}.choices[{i}]", name, c) for i, c in enumerate(choices)]}
    if isinstance(raw, dict):
        check_keys(where, raw, ("low", "high", "log"))
        if name in ("kernel_size", "augment"):
            raise SpecError(f"{where}: {name} takes {{\"choices\": [...]}} or one value, not a low-high range")
        for bound in ("low", "high"):
            if bound not in raw:
                raise SpecError(f"{where}: missing {bound!r}; a range is {{\"low\": A, \"high\": B}}")
        low, high = (_check_value(f"{where}.{b}", name, raw[b]) for b in ("low", "high"))
        if low > high:
            raise SpecError(f"{where}: low ({low}) is above high ({high})")
        log = check_bool(f"{where}.log", raw.get("log", False))
        if log and low <= 0:
            raise SpecError(f"{where}.log: a log range needs low above 0, got {low}")
        return {"low": low, "high": high, "log": log}
    return _check_value(where, name, raw)


def _smallest(dimension: Any) -> Any:
    """The value of a setting that makes the network smallest (SE 0 counts as smallest)."""
    if isinstance(dimension, dict):
        values = dimension["choices"] if "choices" in dimension else [dimension["low"], dimension["high"]]
        return min(values)
    return dimension


@dataclass(frozen=True)
class Space:
    ranges: dict                      # setting -> fixed value | {"low", "high", "log"} | {"choices"}
    objectives: tuple[str, ...] = ("accuracy",)
    budget: int = BUDGET
    max_macs: int | None = None
    epochs: int = 3                   # per trial
    val_fraction: float = 0.1         # trials are scored on this share of train, never on test
    data: str = "builtin"
    device: str = "auto"
    recipe: str = "resnet20"          # the preset whose training settings every trial starts from
    pruner: str = "median"
    startup_trials: int = 3           # the pruner prunes nothing before this many trials have finished
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"objectives": list(self.objectives)}

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @classmethod
    def from_dict(cls, data: Any) -> "Space":
        fields = tuple(f.name for f in dataclasses.fields(cls))
        data = check_keys("space", data, fields)
        d = default_space().to_dict() | data
        objectives = d["objectives"]
        if not isinstance(objectives, list) or not objectives or objectives[0] != "accuracy":
            raise SpecError(f"space.objectives: expected a list starting with \"accuracy\", optionally followed by "
                            f"\"params\" and/or \"macs\", got {objectives!r}")
        for i, o in enumerate(objectives):
            check_choice(f"space.objectives[{i}]", o, tuple(OBJECTIVES))
        if len(set(objectives)) != len(objectives):
            raise SpecError(f"space.objectives: {objectives!r} names an objective twice")
        pruner = check_choice("space.pruner", d["pruner"], PRUNERS)
        if len(objectives) > 1 and pruner != "none":
            raise SpecError("space.pruner: Optuna's pruners need a single objective; with several objectives "
                            "use \"none\"")
        if d["recipe"] not in PRESETS:
            raise SpecError(f"space.recipe: unknown preset {d['recipe']!r}; available: {', '.join(PRESETS)}")
        # a setting left out of ranges keeps its default range
        ranges = default_ranges() | check_keys("space.ranges", data.get("ranges", {}), ARCH_RANGES + TRAIN_RANGES)
        data_path = d["data"]
        if not isinstance(data_path, str) or not data_path:
            raise SpecError(f"space.data: expected 'builtin' or a path, got {data_path!r}")
        device = d["device"]
        if not isinstance(device, str) or not device:
            raise SpecError(f"space.device: expected auto, cpu, cuda or cuda:N, got {device!r}")
        space = cls(
            ranges={name: _check_range(f"space.ranges.{name}", name, raw) for name, raw in ranges.items()},
            objectives=tuple(objectives),
            budget=check_int("space.budget", d["budget"], 1, 10**10),
            max_macs=None if d["max_macs"] is None else check_int("space.max_macs", d["max_macs"], 1, 10**15),
            epochs=check_int("space.epochs", d["epochs"], 1, 10_000),
            val_fraction=check_float("space.val_fraction", d["val_fraction"], 0.01, 0.5),
            data=data_path, device=device, recipe=d["recipe"], pruner=pruner,
            startup_trials=check_int("space.startup_trials", d["startup_trials"], 0, 10_000),
            seed=check_int("space.seed", d["seed"], 0, 2**31 - 1))
        smallest = space.design({name: _smallest(dim) for name, dim in space.ranges.items()})
        params = count(smallest).params
        if params > space.budget:
            raise SpecError(f"space.budget: even the smallest design of this space has {params:,} parameters, over "
                            f"the budget of {space.budget:,}; raise the budget or lower ranges.width, "
                            f"ranges.blocks or ranges.stages")
        return space

    # -- one trial --
    def design(self, values: dict) -> ArchSpec:
        """The network of one sample: stage i has blocks_i blocks of width * growth ** i channels, stride 2
        from the second stage on, and global average pooling."""
        stages, size = [], IMAGE_SIZE
        for i in range(values["stages"]):
            size = conv_out(size, 1 if i == 0 else 2)
            channels = min(CHANNELS_RANGE[1], max(CHANNELS_RANGE[0], round(values["width"] * values["growth"] ** i)))
            stages.append({"blocks": values.get(f"blocks_{i}", values.get("blocks")), "channels": channels,
                           "kernel_size": values["kernel_size"]})
        return ArchSpec.from_dict({"stem": {"channels": stages[0]["channels"]}, "stages": stages,
                                   "se_ratio": values["se_ratio"], "dropout": values["dropout"], "pool_size": size})

    def config(self, values: dict) -> RunConfig:
        """The run config of one sample: the recipe, the sampled settings, and the fixed per-trial ones."""
        train = dict(get_preset(self.recipe)["train"])
        train |= {name: values[name] for name in TRAIN_RANGES}
        train |= {"epochs": self.epochs, "val_fraction": self.val_fraction, "seed": self.seed}
        return RunConfig(self.design(values), TrainConfig.from_dict(train), self.data, None, self.budget)

    def sample(self, trial: optuna.Trial) -> dict:
        """Every setting's value for this trial, through Optuna's suggest_* (fixed settings as they are)."""
        values = {}
        for name in ARCH_RANGES + TRAIN_RANGES:
            if name == "blocks":
                for i in range(values["stages"]):
                    values[f"blocks_{i}"] = _suggest(trial, f"blocks_{i}", "blocks", self.ranges[name])
            else:
                values[name] = _suggest(trial, name, name, self.ranges[name])
        return values


def _suggest(trial: optuna.Trial, param: str, name: str, dimension: Any) -> Any:
    if not isinstance(dimension, dict):
        return dimension
    if "choices" in dimension:  # Optuna's choices are scalars: an augment list goes as "crop+flip"
        encoded = ["+".join(c) or "none" if name == "augment" else c for c in dimension["choices"]]
        value = trial.suggest_categorical(param, encoded)
        return ([] if value == "none" else value.split("+")) if name == "augment" else value
    if name in INT_RANGES:
        return trial.suggest_int(param, dimension["low"], dimension["high"], log=dimension["log"])
    return trial.suggest_float(param, dimension["low"], dimension["high"], log=dimension["log"])


def default_ranges() -> dict:
    """What the presets span: their stage counts, blocks, first widths, width growth, SE, dropout and recipes
    (kernel 5 is added: every preset uses 3, and the search should be able to try a larger one)."""
    archs = [ArchSpec.from_dict(p["arch"]) for p in PRESETS.values()]
    trains = [TrainConfig.from_dict(p["train"]) for p in PRESETS.values()]
    growths = [(a.stages[-1].channels / a.stages[0].channels) ** (1 / (len(a.stages) - 1)) for a in archs]
    blocks = [s.blocks for a in archs for s in a.stages]
    lrs = [t.lr for t in trains]
    return {
        "stages": {"low": min(len(a.stages) for a in archs), "high": max(len(a.stages) for a in archs), "log": False},
        "blocks": {"low": min(blocks), "high": max(blocks), "log": False},
        "width": {"low": min(a.stages[0].channels for a in archs), "high": max(a.stages[0].channels for a in archs),
                  "log": True},
        "growth": {"low": round(min(growths), 2), "high": round(max(growths), 2), "log": False},
        "kernel_size": {"choices": sorted({s.kernel_size for a in archs for s in a.stages} | {5})},
        "se_ratio": {"choices": sorted({a.se_ratio for a in archs})},
        "dropout": {"low": 0.0, "high": max(a.dropout for a in archs), "log": False},
        "lr": {"low": min(lrs), "high": max(lrs), "log": True},
        "weight_decay": {"low": 5e-5, "high": max(t.weight_decay for t in trains), "log": True},
        "batch_size": {"choices": sorted({t.batch_size for t in trains})},
        "augment": {"choices": [list(a) for a in dict.fromkeys(t.augment for t in trains)]},
        "label_smoothing": {"low": 0.0, "high": max(t.label_smoothing for t in trains), "log": False},
        "ema_decay": {"choices": [0.0, 0.999]},
    }


def default_space() -> Space:
    return Space(ranges=default_ranges())


# ---- storage and studies ----------------------------------------------------------------------------

def search_dir() -> Path:
    return runs_root() / ".search"


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_PATTERN.match(name):
        raise SearchError(f"study name {name!r}: use 1-56 letters, digits, '.', '_' or '-', starting with a letter "
                          f"or digit (its trials' runs are named NAME-000, NAME-001, ...)")
    return name


def record_path(name: str) -> Path:
    """This machine's note of a study: its storage, and the worker working on it here."""
    return search_dir() / f"{check_study_name(name)}.json"


def storage_url(name: str, url: str | None = None) -> str:
    """The study's storage: the one given, else the one this machine noted for it, else a SQLite file."""
    return url or read_json(record_path(name), default={}).get("storage") or \
        f"sqlite:///{search_dir() / (name + '.db')}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RELAUNCHES, inherit_intermediate_values=True))
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as e:
        raise SearchError(f"storage {display_url(url)}: cannot open it ({e}); give a URL like "
                          f"postgresql+psycopg://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass)") from None


def display_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def pruner_for(space: Space) -> optuna.pruners.BasePruner:
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=space.startup_trials, n_warmup_steps=0)
    if space.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def load_study(name: str, storage: optuna.storages.RDBStorage) -> tuple[optuna.Study, Space]:
    """An existing study and its space (kept in the study, so every worker and trial reads the same)."""
    try:
        study = optuna.load_study(study_name=check_study_name(name), storage=storage)
    except KeyError:
        raise SearchError(f"no study named {name!r} in {display_url(storage.url)}; start it with "
                          f"`python -m core search --space SPACE.json --study {name} --trials N`") from None
    space = Space.from_dict(study.user_attrs["space"])
    study.pruner = pruner_for(space)
    return study, space


def create_study(name: str, space: Space, url: str | None = None) -> optuna.Study:
    """A new study holding `space`, or the existing one if it holds the same space."""
    storage = open_storage(storage_url(check_study_name(name), url))
    study = optuna.create_study(study_name=name, storage=storage, directions=space.directions, load_if_exists=True)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space.to_dict())
    elif stored != space.to_dict():
        raise SearchError(f"study {name!r} already exists with another space; pick another --study name, or leave "
                          f"out --space to continue it with its own")
    return study


# ---- a trial's process: report, prune, tell ----------------------------------------------------------

class SearchTrial:
    """The Optuna trial a run is, seen from the run's training process (core/train.py)."""

    def __init__(self, run: Run, tag: dict):
        self.run, self.trial_id = run, tag["trial_id"]
        self.storage = open_storage(tag["storage"])
        self.study, self.space = load_study(tag["study"], self.storage)
        self.trial = optuna.Trial(self.study, self.trial_id)
        # heartbeats from a thread, so an epoch of any length never looks like a dead trial
        threading.Thread(target=self.beat, daemon=True).start()

    def beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a database hiccup: the next beat tries again
                self.storage.record_heartbeat(self.trial_id)
            time.sleep(HEARTBEAT_S)

    @classmethod
    def of(cls, run: Run) -> "SearchTrial | None":
        tag = run.status().get("search")
        return cls(run, tag) if tag else None

    def report(self, epoch: int, accuracy: float) -> None:
        """After each epoch: the validation accuracy to the study; raises PruneRequested when the pruner says so."""
        if len(self.space.objectives) > 1:  # Optuna prunes single-objective studies only
            return
        if epoch not in self.storage.get_trial(self.trial_id).intermediate_values:  # resumed: reported before
            self.trial.report(accuracy, epoch)
        if self.trial.should_prune():
            raise PruneRequested(epoch)

    def end(self, status: dict) -> None:
        """The run's end, told to the study. A stopped run stays RUNNING: resuming the study resumes it."""
        state = status.get("state")
        if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
            return  # told already (this is a relaunch of an ended trial): Optuna keeps the first answer
        if state == "finished":
            cfg = self.run.config()
            cost = count(cfg.arch)
            values = {"accuracy": status["best_acc"], "params": cost.params, "macs": cost.macs}
            self.study.tell(self.trial, [values[o] for o in self.space.objectives])
        elif state == "pruned":
            self.study.tell(self.trial, state=TrialState.PRUNED)
        elif state == "failed":
            self.trial.set_user_attr("error", status.get("error"))
            self.study.tell(self.trial, state=TrialState.FAIL)


# ---- the worker -----------------------------------------------------------------------------------------

def devices(request: str) -> list[str]:
    """One trial at a time per device: every visible GPU for auto, else the CPU."""
    if request != "auto":
        return [request]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def trial_run(trial: optuna.trial.FrozenTrial) -> Run | None:
    name = trial.user_attrs.get("run")
    run = Run.named(name) if name else None
    return run if run is not None and run.exists() else None


def counted(trials: list) -> int:
    """Trials toward --trials: all but over-budget rejections and failures a retry has replaced."""
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(1 for t in trials if not t.user_attrs.get("rejected") and
               not (t.state == TrialState.FAIL and t.number in retried))


def stop_requested(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get("stop"))


class Worker:
    """One machine's share of a study: asks for trials, launches them, relaunches the ones that died."""

    def __init__(self, name: str, url: str | None, trials: int, device: str | None = None):
        self.url = storage_url(name, url)
        self.storage = open_storage(self.url)
        self.study, self.space = load_study(name, self.storage)
        self.name, self.trials = name, trials
        self.devices = devices(device or self.space.device)
        self.in_flight: dict[str, Run] = {}  # device -> the run of a trial training there

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)  # stdout is for the JSON

    def run(self) -> dict:
        self.study.set_user_attr("trials", self.trials)
        note_worker(self.name, os.getpid())
        stop = {"asked": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
        rejected_in_a_row = 0
        self.log(f"study {self.name}: {self.trials} trials on {', '.join(self.devices)}, storage "
                 f"{display_url(self.url)}")
        while True:
            optuna.storages.fail_stale_trials(self.study)
            self.in_flight = {d: r for d, r in self.in_flight.items() if r.status().get("state") in ACTIVE}
            trials = self.study.get_trials(deepcopy=False)
            if stop["asked"] or stop_requested(self.study):
                for run in self.in_flight.values():
                    stop_run(run)
                self.log("stop requested: trials in flight stop at their next step and resume with the study")
                break
            free = [d for d in self.devices if d not in self.in_flight]
            if free and self.relaunch_dead(trials, free[0]):
                continue
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if free and (counted(trials) < self.trials or waiting):
                run = self.start_trial(free[0])
                if run is None:
                    rejected_in_a_row += 1
                    if rejected_in_a_row >= MAX_REJECTED:
                        raise SearchError(f"{MAX_REJECTED} designs in a row were over the budget; narrow the "
                                          f"space's ranges (width, blocks, stages) or raise its budget")
                    continue
                rejected_in_a_row = 0
                self.in_flight[free[0]] = run
                continue
            if not self.in_flight and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                break
            time.sleep(POLL_S)
        return status(self.name, self.url)

    def start_trial(self, device: str) -> Run | None:
        """Ask for a trial; reject it if over budget, else launch its run. None when rejected."""
        # seeded by the trial count: one worker's study is reproducible, and every ask draws afresh
        seed = self.space.seed + len(self.study.get_trials(deepcopy=False))
        self.study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        trial = self.study.ask()
        self.storage.record_heartbeat(trial._trial_id)  # from now until the run beats itself
        values = self.space.sample(trial)
        cfg = self.space.config(values)
        cost = count(cfg.arch)
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("macs", cost.macs)
        trial.set_constraint("params_over_budget", cost.params - self.space.budget)
        if self.space.max_macs is not None:
            trial.set_constraint("macs_over_ceiling", cost.macs - self.space.max_macs)
        if any(v > 0 for v in trial.constraints.values()):
            reason = (f"{cost.params:,} parameters (budget {self.space.budget:,})" if cost.params > self.space.budget
                      else f"{cost.macs:,} MACs (ceiling {self.space.max_macs:,})")
            trial.set_user_attr("rejected", reason)
            self.study.tell(trial, state=TrialState.PRUNED)  # never trained; the sampler sees it infeasible
            self.log(f"trial {trial.number}: rejected, {reason}")
            return None
        run = self.resumable_run(trial) or create_run(cfg, f"{self.name}-{trial.number:03d}")
        trial.set_user_attr("run", run.name)
        run.update_status(search=self.tag(trial._trial_id, trial.number))
        launch(run, device)
        self.log(f"trial {trial.number}: {run.name} on {device}, {cost.params:,} parameters")
        return run

    def tag(self, trial_id: int, number: int) -> dict:
        return {"study": self.name, "storage": self.url, "trial_id": trial_id, "trial": number}

    def resumable_run(self, trial: optuna.Trial) -> Run | None:
        """A retried trial (Optuna queued it again after its heartbeat stopped) resumes its run if it is here."""
        original = self.storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        if original is None:
            return None
        run = trial_run(self.study.trials[original])
        return run if run is not None and run.status().get("state") not in ACTIVE else None

    def relaunch_dead(self, trials: list, device: str) -> bool:
        """Relaunch, here, one trial that Optuna has RUNNING but whose run here has no process (killed, or
        stopped). Under a lock, so two workers of this machine never relaunch the same run."""
        with locked(record_path(self.name)):
            for trial in trials:
                run = trial_run(trial) if trial.state == TrialState.RUNNING else None
                if run is None or run in self.in_flight.values():
                    continue
                status = run.status()
                if status.get("pid") is None or process_alive(status["pid"], status.get("pid_start")):
                    continue  # not launched yet, or alive (perhaps between its last status and telling Optuna)
                if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    continue  # it told Optuna and ended after `trials` was read
                relaunches = status.get("relaunches", 0) + 1
                if relaunches > MAX_RELAUNCHES:
                    self.study.tell(trial.number, state=TrialState.FAIL)
                    self.log(f"trial {trial.number}: its process died {MAX_RELAUNCHES} times; failed")
                    continue
                run.update_status(relaunches=relaunches)
                self.storage.record_heartbeat(trial._trial_id)
                launch(run, device)
                self.in_flight[device] = run
                self.log(f"trial {trial.number}: {run.name} had no process ({status.get('state')}); resumed on "
                         f"{device}")
                return True
        return False


def continue_study(name: str, url: str) -> None:
    """Searching again continues a stopped study. Cleared by whoever asks for a worker, not by the worker
    itself, so that a stop that comes while a detached worker is starting still stops it."""
    study, _ = load_study(name, open_storage(url))
    study.set_user_attr("stop", False)


def detach(name: str, url: str, trials: int, device: str | None) -> int:
    """Run a worker in its own process and session, logging to runs/.search/NAME.log; returns its pid."""
    continue_study(name, url)
    cmd = [sys.executable, "-m", "core", "search", "--study", name, "--storage", url, "--trials", str(trials),
           "--detached"]
    if device:
        cmd += ["--device", device]
    search_dir().mkdir(parents=True, exist_ok=True)
    with open(search_dir() / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    note_worker(name, proc.pid)  # at once, so the study shows as live before the worker has started
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid


def note_worker(name: str, pid: int) -> None:
    update_record(name, pid=pid, pid_start=process_start_time(pid), started=time.time())


def update_record(name: str, **fields) -> None:
    search_dir().mkdir(parents=True, exist_ok=True)
    update_json(record_path(name), lambda record: record | fields)


def request_stop(name: str, url: str | None = None) -> dict:
    """Every worker of the study stops (they read the flag from the storage) and so do its runs here."""
    study, _ = load_study(name, open_storage(storage_url(name, url)))
    study.set_user_attr("stop", True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = trial_run(trial)
        if run is not None:
            stop_run(run)
    return status(name, url)


# ---- status -----------------------------------------------------------------------------------------------

def worker_alive(name: str) -> bool:
    record = read_json(record_path(name), default={})
    return process_alive(record.get("pid"), record.get("pid_start"))


def trial_row(trial: optuna.trial.FrozenTrial, retried: dict[int, int]) -> dict:
    run = trial_run(trial)
    run_status = run.status() if run is not None else {}
    state = {TrialState.WAITING: "waiting", TrialState.RUNNING: run_status.get("state", "running"),
             TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[trial.state]
    if trial.user_attrs.get("rejected"):
        state = "rejected"
    elif trial.number in retried:
        state = "retried"
    steps = trial.intermediate_values
    accuracy = trial.values[0] if trial.state == TrialState.COMPLETE else \
        (steps[max(steps)] if steps else run_status.get("best_acc"))
    settings = {k: ("+".join(v) if isinstance(v, list) else v) for k, v in trial.params.items()}
    return {"number": trial.number, "state": state, "run": trial.user_attrs.get("run"),
            "params": trial.user_attrs.get("params"), "macs": trial.user_attrs.get("macs"),
            "accuracy": accuracy, "epochs_done": max(steps) if steps else run_status.get("epoch"),
            "pruned_at": max(steps) if state == "pruned" and steps else None,
            "rejected": trial.user_attrs.get("rejected"), "error": trial.user_attrs.get("error"),
            "retry_of": trial.system_attrs.get("failed_trial"), "retried_as": retried.get(trial.number),
            "settings": settings}


def status(name: str, url: str | None = None) -> dict:
    """The study as JSON: its trials, the best one, and the Pareto front (several objectives)."""
    study, space = load_study(name, open_storage(storage_url(name, url)))
    optuna.storages.fail_stale_trials(study)  # whoever looks notices a trial whose heartbeat stopped
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    rows = [trial_row(t, retried) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_trials = [rows[t.number] for t in study.best_trials] if complete else []  # feasible ones only
    best = max(best_trials, key=lambda r: r["accuracy"]) if best_trials else None
    states = [r["state"] for r in rows]
    return {"study": name, "storage": display_url(storage_url(name, url)), "space": space.to_dict(),
            "objectives": list(space.objectives), "trials_target": study.user_attrs.get("trials"),
            "counted": counted(trials), "worker_alive": worker_alive(name),
            "stop_requested": stop_requested(study),
            "states": {s: states.count(s) for s in dict.fromkeys(states)},
            "best": best, "pareto_front": best_trials if len(space.objectives) > 1 else pareto_front(rows),
            "importances": importances(study, complete), "trials": rows}


def pareto_front(rows: list[dict], cost: str = "params") -> list[dict]:
    """The finished trials that no other beats on both accuracy (higher) and `cost` (lower), cheapest first:
    the edge of the trade-off, in a study of one objective (with several, Optuna's best_trials is the front)."""
    edge, best = [], -1.0
    for row in sorted((r for r in rows if r["state"] == "finished"), key=lambda r: (r[cost], -r["accuracy"])):
        if row["accuracy"] > best:
            edge.append(row)
            best = row["accuracy"]
    return edge


def importances(study: optuna.Study, complete: list) -> dict[str, float] | None:
    """Which settings mattered most for accuracy (Optuna's default evaluator, PED-ANOVA), once a few trials
    have finished. PED-ANOVA explains low values of its target, so the target is accuracy negated."""
    if len(complete) < 3:
        return None
    try:
        with warnings.catch_warnings():  # its notes on few trials per region: the page says how many there are
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, target=lambda t: -t.values[0])
    except (RuntimeError, ValueError):  # e.g. every finished trial had the same settings
        return None
    return {k: float(v) for k, v in found.items() if not math.isnan(v)}


def list_studies() -> list[str]:
    """The studies this machine has worked on or looked at, newest first."""
    if not search_dir().is_dir():
        return []
    records = sorted(search_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem for p in records if STUDY_PATTERN.match(p.stem)]


def start(space: Space, name: str, url: str | None, trials: int) -> str:
    """Create (or reopen) the study and note it on this machine; returns its storage URL."""
    url = storage_url(check_study_name(name), url)
    create_study(name, space, url)
    update_record(name, storage=url, trials=trials)
    return url


