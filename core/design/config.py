"""The run config: architecture + training settings + data, as plain data in one place.

`TrainConfig` lists every training hyperparameter with its default (the best seed's recipe:
SGD momentum 0.9, lr 0.1, cosine, weight decay 5e-4, batch 128). A run folder stores the
whole `RunConfig` as JSON, so every run says exactly how it was made. The speed-run tricks of airbench
(alternating flip, the linear schedule, the (t/T)^3 averaging ramp, Lookahead's pull and its ending on the slow
weights, frozen BatchNorm scales and a BatchNorm bias lr multiplier, 1-pixel-shift TTA) are settings here, each
off by default, so no preset changes meaning.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.design.budget import BUDGET
from core.design.presets import get_preset
from core.design.spec import ArchSpec, SpecError, check_bool, check_choice, check_float, check_int, check_keys

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("cosine", "onecycle", "step", "constant", "linear")
AUGMENTS = ("crop", "flip", "alternating_flip", "cutout", "perspective", "autoaugment", "trivialaugment")
# auto: core.nn.infer.amp_policy (bf16 on sm >= 80 and AMX CPUs, fp16 + GradScaler on sm 7.x and Apple's mps)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    time_limit: float = 0.0        # seconds of training (evaluation apart) instead of `epochs`; 0 = off
    batch_size: int = 128          # the global batch: W processes take batch_size / W each (docs/DISTRIBUTED.md)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9          # SGD and RMSprop
    nesterov: bool = False         # SGD
    weight_decay: float = 5e-4
    lookahead: bool = False        # wrap the optimizer in Lookahead (k=5)
    lookahead_alpha: float = 0.5   # the share of the way the slow weights move to the fast ones (airbench: 0.23)
    lookahead_ends_slow: bool = False  # BatchNorm statistics averaged too, and the run ends on the slow weights
    averaging_ramp: bool = False   # EMA decay and Lookahead's slow share grow as (t/T)^3 over the training (airbench)
    freeze_bn_scale: bool = False  # BatchNorm weights stay 1, not trained (airbench); biases still train
    bn_bias_lr_scale: float = 1.0  # BatchNorm biases train at lr x this, weight decay / this (airbench: 64)
    schedule: str = "cosine"       # linear: after the warm-up, straight down to 0 (airbench)
    warmup_epochs: float = 0.0     # linear warm-up from lr/10, before the schedule
    step_epochs: int = 30          # step schedule: multiply lr by step_gamma every step_epochs
    step_gamma: float = 0.1
    grad_clip: float = 0.0         # max gradient norm; 0 = off
    label_smoothing: float = 0.0
    ema_decay: float = 0.0         # weight EMA, e.g. 0.999; 0 = off; evaluated and saved when on
    # alternating_flip instead of flip: a random half mirrored in even epochs, the other half in odd ones
    augment: tuple[str, ...] = ("crop", "flip")
    crop_padding: int = 4
    cutout_size: int = 8
    normalize: bool = True
    tta_flip: bool = False         # average predictions over the image and its mirror at test time
    tta_shift: bool = False        # also over the image shifted 1 pixel up-left and down-right (6 views with flip)
    val_fraction: float = 0.0      # carve a validation split from train; 0 = evaluate on test
    seed: int = 0
    precision: str = "auto"
    compile: bool = False          # torch.compile the model (CUDA)
    log_every: int = 20            # write a metrics line every N steps (and every few seconds), so charts move
    stall_limit: float = 0.0       # seconds without a finished step before the run is stalled; 0 = auto
    sync_batchnorm: bool = False   # several GPUs: BatchNorm statistics over the global batch, not per process

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = check_keys("train", data, names)
        d = {**cls().to_dict(), **data}
        augment = d["augment"]
        if not isinstance(augment, (list, tuple)):
            raise SpecError(f"train.augment: expected a list drawn from {', '.join(AUGMENTS)}, got {augment!r}")
        for a in augment:
            check_choice("train.augment", a, AUGMENTS)
        if "flip" in augment and "alternating_flip" in augment:
            raise SpecError("train.augment: flip and alternating_flip both mirror images; choose one")
        return cls(
            epochs=check_int("train.epochs", d["epochs"], 1, 10_000),
            time_limit=check_float("train.time_limit", d["time_limit"], 0.0, 1e6),
            batch_size=check_int("train.batch_size", d["batch_size"], 1, 65_536),
            optimizer=check_choice("train.optimizer", d["optimizer"], OPTIMIZERS),
            lr=check_float("train.lr", d["lr"], 1e-7, 10.0),
            momentum=check_float("train.momentum", d["momentum"], 0.0, 0.999),
            nesterov=check_bool("train.nesterov", d["nesterov"]),
            weight_decay=check_float("train.weight_decay", d["weight_decay"], 0.0, 1.0),
            lookahead=check_bool("train.lookahead", d["lookahead"]),
            lookahead_alpha=check_float("train.lookahead_alpha", d["lookahead_alpha"], 0.01, 1.0),
            lookahead_ends_slow=check_bool("train.lookahead_ends_slow", d["lookahead_ends_slow"]),
            averaging_ramp=check_bool("train.averaging_ramp", d["averaging_ramp"]),
            freeze_bn_scale=check_bool("train.freeze_bn_scale", d["freeze_bn_scale"]),
            bn_bias_lr_scale=check_float("train.bn_bias_lr_scale", d["bn_bias_lr_scale"], 0.01, 1000.0),
            schedule=check_choice("train.schedule", d["schedule"], SCHEDULES),
            warmup_epochs=check_float("train.warmup_epochs", d["warmup_epochs"], 0.0, 1000.0),
            step_epochs=check_int("train.step_epochs", d["step_epochs"], 1, 10_000),
            step_gamma=check_float("train.step_gamma", d["step_gamma"], 0.0, 1.0),
            grad_clip=check_float("train.grad_clip", d["grad_clip"], 0.0, 1000.0),
            label_smoothing=check_float("train.label_smoothing", d["label_smoothing"], 0.0, 0.5),
            ema_decay=check_float("train.ema_decay", d["ema_decay"], 0.0, 0.99999),
            augment=tuple(dict.fromkeys(augment)),
            crop_padding=check_int("train.crop_padding", d["crop_padding"], 0, 16),
            cutout_size=check_int("train.cutout_size", d["cutout_size"], 1, 32),
            normalize=check_bool("train.normalize", d["normalize"]),
            tta_flip=check_bool("train.tta_flip", d["tta_flip"]),
            tta_shift=check_bool("train.tta_shift", d["tta_shift"]),
            val_fraction=check_float("train.val_fraction", d["val_fraction"], 0.0, 0.5),
            seed=check_int("train.seed", d["seed"], 0, 2**31 - 1),
            precision=check_choice("train.precision", d["precision"], PRECISIONS),
            compile=check_bool("train.compile", d["compile"]),
            log_every=check_int("train.log_every", d["log_every"], 1, 100_000),
            stall_limit=check_float("train.stall_limit", d["stall_limit"], 0.0, 1e6),
            sync_batchnorm=check_bool("train.sync_batchnorm", d["sync_batchnorm"]),
        )


@dataclass(frozen=True)
class RunConfig:
    arch: ArchSpec
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str = "builtin"          # "builtin" (the slice shipped in the repo) or a path
    preset: str | None = None      # the preset it started from, for the record
    budget: int = BUDGET
    allow_over_budget: bool = False

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "train": self.train.to_dict(), "data": self.data,
                "preset": self.preset, "budget": self.budget, "allow_over_budget": self.allow_over_budget}

    def replace_train(self, **changes) -> RunConfig:
        return dataclasses.replace(self, train=TrainConfig.from_dict({**self.train.to_dict(), **changes}))

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """A run config, or a bare architecture spec (then every training setting takes its default)."""
        if isinstance(data, dict) and "stages" in data:
            data = {"arch": data}
        data = check_keys("config", data, ("arch", "train", "data", "preset", "budget", "allow_over_budget", "params"))
        if "arch" not in data:
            raise SpecError("config: missing 'arch'; give the architecture spec there (or a bare spec file)")
        preset = data.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise SpecError(f"config.preset: expected a preset name or null, got {preset!r}")
        dataset = data.get("data", "builtin")
        if not isinstance(dataset, str) or not dataset:
            raise SpecError(f"config.data: expected 'builtin' or a path, got {dataset!r}")
        return cls(arch=ArchSpec.from_dict(data["arch"]), train=TrainConfig.from_dict(data.get("train", {})),
                   data=dataset, preset=preset,
                   budget=check_int("config.budget", data.get("budget", BUDGET), 1, 10**10),
                   allow_over_budget=check_bool("config.allow_over_budget", data.get("allow_over_budget", False)))

    @classmethod
    def from_preset(cls, name: str) -> RunConfig:
        p = get_preset(name)
        return cls.from_dict({"arch": p["arch"], "train": p["train"], "preset": name})
