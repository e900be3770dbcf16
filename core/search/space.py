"""A search space as plain JSON: what to search (ranges or choices), the budget, and the fixed settings of
every trial; and one sample of it as a design and a run config."""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import optuna

from core.design.budget import BUDGET, count
from core.design.config import RunConfig, TrainConfig
from core.design.presets import PRESETS, get_preset
from core.design.spec import (ACTIVATIONS, BLOCKS_RANGE, CHANNELS_RANGE, DOWNSAMPLES, DROPOUT_RANGE, IMAGE_SIZE,
                              KERNEL_SIZES, LOGIT_SCALE_RANGE, POOLINGS, SE_RATIO_RANGE, STAGES_RANGE, ArchSpec,
                              SpecError, check_bool, check_choice, check_float, check_int, check_keys, conv_out)


OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "macs": "minimize"}


PRUNERS = ("median", "halving", "none")


ARCH_RANGES = ("stages", "blocks", "width", "growth", "kernel_size", "se_ratio", "dropout", "whiten", "downsample",
               "activation", "pooling", "logit_scale")
CHOICES_ONLY = ("kernel_size", "augment", "whiten", "downsample", "activation", "pooling")  # no low-high range


TRAIN_RANGES = ("lr", "weight_decay", "batch_size", "augment", "label_smoothing", "ema_decay")


INT_RANGES = ("stages", "blocks", "width", "se_ratio", "batch_size")


GROWTH_RANGE = (0.5, 4.0)  # width of stage i = width * growth ** i


SHARE_SAMPLES = 128     # designs drawn to say how much of a space is over its budget
TOLERATED_OVER = 0.1    # the width suggested keeps at most this share of designs over it


def _check_arch_value(where: str, name: str, value: Any) -> Any:
    checks = {"stages": lambda: check_int(where, value, *STAGES_RANGE),
              "blocks": lambda: check_int(where, value, *BLOCKS_RANGE),
              "width": lambda: check_int(where, value, *CHANNELS_RANGE),
              "growth": lambda: check_float(where, value, *GROWTH_RANGE),
              "kernel_size": lambda: check_choice(where, value, KERNEL_SIZES),
              "se_ratio": lambda: check_int(where, value, *SE_RATIO_RANGE),
              "dropout": lambda: check_float(where, value, *DROPOUT_RANGE),
              "whiten": lambda: check_bool(where, value),
              "downsample": lambda: check_choice(where, value, DOWNSAMPLES),
              "activation": lambda: check_choice(where, value, ACTIVATIONS),
              "pooling": lambda: check_choice(where, value, POOLINGS),
              "logit_scale": lambda: check_float(where, value, *LOGIT_SCALE_RANGE)}
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
        if name in CHOICES_ONLY:
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
    stall_limit: float = 0.0          # per trial: seconds without a step before its run is stalled; 0 = the run's rule

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"objectives": list(self.objectives)}

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @classmethod
    def from_dict(cls, data: Any) -> Space:
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
            seed=check_int("space.seed", d["seed"], 0, 2**31 - 1),
            stall_limit=check_float("space.stall_limit", d["stall_limit"], 0.0, 1e6))
        smallest = space.design({name: _smallest(dim) for name, dim in space.ranges.items()})
        params = count(smallest).params
        if params > space.budget:
            raise SpecError(f"space.budget: even the smallest design of this space has {params:,} parameters, over "
                            f"the budget of {space.budget:,}; raise the budget or lower ranges.width, "
                            f"ranges.blocks or ranges.stages")
        return space

    # -- one trial --
    def design(self, values: dict) -> ArchSpec:
        """The network of one sample: a stem (whitened or not), then stage i has blocks_i blocks of
        width * growth ** i channels, stride 2 (strided or max-pooled) from the second stage on, and global average
        (or max) pooling into the linear head."""
        stages, size = [], IMAGE_SIZE
        for i in range(values["stages"]):
            size = conv_out(size, 1 if i == 0 else 2)
            channels = min(CHANNELS_RANGE[1], max(CHANNELS_RANGE[0], round(values["width"] * values["growth"] ** i)))
            stages.append({"blocks": values.get(f"blocks_{i}", values.get("blocks")), "channels": channels,
                           "kernel_size": values["kernel_size"], "downsample": values.get("downsample", "stride")})
        return ArchSpec.from_dict({"stem": {"channels": stages[0]["channels"], "whiten": values.get("whiten", False)},
                                   "stages": stages,
                                   "se_ratio": values["se_ratio"], "dropout": values["dropout"], "pool_size": size,
                                   "activation": values.get("activation", "relu"),
                                   "pooling": values.get("pooling", "avg"),
                                   "logit_scale": values.get("logit_scale", 1.0)})

    def config(self, values: dict) -> RunConfig:
        """The run config of one sample: the recipe, the sampled settings, and the fixed per-trial ones."""
        train = dict(get_preset(self.recipe)["train"])
        train |= {name: values[name] for name in TRAIN_RANGES}
        train |= {"epochs": self.epochs, "val_fraction": self.val_fraction, "seed": self.seed,
                  "stall_limit": self.stall_limit}
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


@dataclass(frozen=True)
class BudgetShare:
    """How much of a space is over its limits, from designs drawn at random as Optuna's first trials are."""
    samples: int
    over: float                     # the share of designs over the budget or the MACs ceiling
    largest: int                    # parameters of the largest design drawn
    width: tuple[int, int] | None   # first-stage widths that keep at most TOLERATED_OVER over; None: none do
    width_over: float | None        # the share over with those widths (with none: at the narrowest width)


class _Draw:
    """What Space.sample asks of an Optuna trial, answered at random as Optuna's RandomSampler does."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.rng.choice(choices)

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        if not log:
            return self.rng.randint(low, high)
        return min(high, max(low, round(math.exp(self.rng.uniform(math.log(low - 0.5), math.log(high + 0.5))))))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)


def budget_share(space: Space, samples: int = SHARE_SAMPLES) -> BudgetShare:
    """The share of `space`'s designs over its budget (or MACs ceiling), and first-stage widths that keep nearly
    all of them within it. Each drawn design keeps its place in the width range (its quantile, on the range's
    scale) while the range's top comes down (and its bottom, below the range's, to the narrowest width), found
    by bisection. Counted on the specs, so it takes a fraction of a second: no network is built."""
    draws = [space.sample(_Draw(random.Random(space.seed * 100_003 + i))) for i in range(samples)]

    def over(values: dict) -> tuple[bool, int]:
        cost = count(space.design(values))
        return cost.params > space.budget or (space.max_macs is not None and cost.macs > space.max_macs), cost.params

    judged = [over(v) for v in draws]
    share, largest = sum(o for o, _ in judged) / samples, max(p for _, p in judged)
    width = space.ranges["width"]
    if share <= TOLERATED_OVER or not isinstance(width, dict) or "low" not in width:
        return BudgetShare(samples, share, largest, None, None)
    to, back = (math.log, math.exp) if width["log"] else (float, float)
    quantiles = [(to(v["width"]) - to(width["low"])) / (to(width["high"]) - to(width["low"])) for v in draws]

    def widths(top: int) -> tuple[int, int]:
        return (width["low"] if top >= width["low"] else CHANNELS_RANGE[0]), top

    def share_within(top: int) -> float:
        low, high = map(to, widths(top))
        return sum(over(v | {"width": round(back(low + q * (high - low)))})[0]
                   for v, q in zip(draws, quantiles)) / samples

    narrowest = share_within(CHANNELS_RANGE[0])
    if narrowest > TOLERATED_OVER:
        return BudgetShare(samples, share, largest, None, narrowest)
    fits, lo, hi = (CHANNELS_RANGE[0], narrowest), CHANNELS_RANGE[0] + 1, width["high"] - 1
    while lo <= hi:  # the share over grows with the top width
        mid = (lo + hi) // 2
        mid_share = share_within(mid)
        if mid_share <= TOLERATED_OVER:
            fits, lo = (mid, mid_share), mid + 1
        else:
            hi = mid - 1
    return BudgetShare(samples, share, largest, widths(fits[0]), fits[1])


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
        "whiten": False,  # searched only when asked: {"choices": [false, true]}
        "downsample": "stride",  # likewise: {"choices": ["stride", "maxpool"]}
        "activation": "relu",  # likewise: {"choices": ["relu", "gelu"]}
        "pooling": "avg",  # likewise: {"choices": ["avg", "max"]}
        "logit_scale": 1.0,  # likewise: {"choices": [1.0, 0.125]} or {"low": 0.1, "high": 1.0, "log": true}
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
