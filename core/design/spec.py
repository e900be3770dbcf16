"""The architecture spec: a CIFAR ResNet described as plain, validated, JSON round-trippable data.

One spec -> one network. `core.nn.model` builds it, `core.design.budget` counts it without building it.
Every input passes through `ArchSpec.from_dict`, which either returns a valid spec or raises one
`SpecError` naming the field and what is allowed there.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import StudioError

IMAGE_SIZE = 32  # CIFAR-10 images are 32x32; every resolution below follows from this
IN_CHANNELS = 3

STAGES_RANGE = (1, 6)
BLOCKS_RANGE = (1, 16)
CHANNELS_RANGE = (4, 1024)
KERNEL_SIZES = (1, 3, 5, 7)
# a whitened stem may also be 2x2, without padding (airbench): a 31x31 map, which max pooling floors to 15, 7, 3,
# a fifth fewer MACs than 32, 16, 8 for the same layers
WHITENED_STEM_KERNEL_SIZES = (1, 2, 3, 5, 7)
SHORTCUT_KERNEL_SIZES = (1, 3)
STRIDES = (1, 2)
# how a stride-2 stage halves the map: its first conv strided (ResNet), or that conv at full size then 2x2 max
# pooling, on the shortcut too (ResNet-9, airbench: 4x the first conv's MACs, more accuracy an epoch)
DOWNSAMPLES = ("stride", "maxpool")
SE_RATIO_RANGE = (0, 1024)  # 0 = no squeeze-and-excitation
DROPOUT_RANGE = (0.0, 0.9)
CLASSES_RANGE = (2, 1000)
# the nonlinearity after every conv of the stem and the blocks; GELU (airbench94's) learns more an epoch on CIFAR-10
# and costs about 5% of a CPU step (docs/PERFORMANCE.md); squeeze-and-excitation keeps its ReLU
ACTIVATIONS = ("relu", "gelu")
ACTIVATION_NAMES = {"relu": "ReLU", "gelu": "GELU"}  # as people write them
# the head: the pool over the last map (average, or max as ResNet-9 and airbench94 have it), a linear layer, and a
# constant that scales its logits (ResNet-9: 0.125, airbench94: 1/9), so the loss starts flatter and the head learns
# at a pace of its own
POOLINGS = ("avg", "max")
POOLING_NAMES = {"avg": "Average", "max": "Max"}
LOGIT_SCALE_RANGE = (0.01, 10.0)


class SpecError(StudioError, ValueError):
    """A spec or config that cannot be used; the message names the field and the allowed values."""


# ---- small validators shared by every config schema in core/ ---------------------------------

def check_keys(where: str, data: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected an object with keys {', '.join(allowed)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")
    return data


def check_int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SpecError(f"{where}: expected a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{where}: {value} is out of range; allowed: {lo} to {hi}")
    return int(value)


def check_float(where: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SpecError(f"{where}: expected a number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{where}: {value} is out of range; allowed: {lo} to {hi}")
    return float(value)


def check_choice(where: str, value: Any, choices: tuple) -> Any:
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise SpecError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, choices))}")
    if value not in choices:
        raise SpecError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, choices))}")
    return value


def check_bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value


def conv_out(size: int, stride: int) -> int:
    """Output size of a conv with an odd kernel, padding kernel//2 and this stride."""
    return (size - 1) // stride + 1


def stem_padding(kernel_size: int) -> int:
    """kernel//2 for an odd kernel (the map keeps its size), none for a 2x2 one."""
    return (kernel_size - 1) // 2


def stem_size(kernel_size: int) -> int:
    """Side of the stem's output map: 32, or 31 after a 2x2 whitening conv."""
    return IMAGE_SIZE + 2 * stem_padding(kernel_size) - kernel_size + 1


def stage_out(size: int, stride: int, downsample: str) -> int:
    """Side of a stage's output map: a strided conv rounds up (its padding), 2x2 max pooling rounds down (floor, as
    airbench: 31 -> 15); the two agree on the even sizes of a 32x32 stem."""
    return size // stride if downsample == "maxpool" else conv_out(size, stride)


def stage_sizes(stages: Iterable[tuple[int, str]], stem_kernel_size: int = 3) -> list[int]:
    """Side of the output feature map of stages of these (stride, downsample), in pixels (ArchSpec.feature_sizes);
    for a design being edited too, which may not validate."""
    size, sizes = stem_size(stem_kernel_size), []
    for stride, downsample in stages:
        size = stage_out(size, stride, downsample)
        sizes.append(size)
    return sizes


# ---- the spec ----------------------------------------------------------------------------------

def whitening_channels(kernel_size: int) -> int:
    """Filters of a whitened stem's frozen conv: each eigenvector of the kxk patches' covariance, and its
    negative (a ReLU after it then keeps both signs)."""
    return 2 * IN_CHANNELS * kernel_size * kernel_size


@dataclass(frozen=True)
class StemSpec:
    channels: int = 64
    kernel_size: int = 3
    # whiten: a frozen kxk conv that whitens the image's patches (computed from training images when a run
    # starts; airbench), a ReLU, then a trainable 1x1 conv to `channels`, instead of one trainable kxk conv;
    # such a stem may be 2x2 (WHITENED_STEM_KERNEL_SIZES)
    whiten: bool = False


@dataclass(frozen=True)
class StageSpec:
    blocks: int = 2
    channels: int = 64
    kernel_size: int = 3
    shortcut_kernel_size: int = 1
    stride: int = 1
    downsample: str = "stride"


@dataclass(frozen=True)
class ArchSpec:
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    batch_norm: bool = True
    se_ratio: int = 0
    dropout: float = 0.0
    pool_size: int = 4
    num_classes: int = 10
    activation: str = "relu"
    pooling: str = "avg"
    logit_scale: float = 1.0

    # -- conversion --
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = list(d["stages"])
        if not self.stem.whiten:  # designs without it read as they did before it existed
            del d["stem"]["whiten"]
        for stage in d["stages"]:  # the same for max-pool downsampling
            if stage["downsample"] == "stride":
                del stage["downsample"]
        for field in ("activation", "pooling", "logit_scale"):  # and for the settings that came later
            if d[field] == self.__dataclass_fields__[field].default:
                del d[field]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes) -> ArchSpec:
        """A new validated spec with some top-level fields changed."""
        return ArchSpec.from_dict({**self.to_dict(), **changes})

    @property
    def feature_sizes(self) -> list[int]:
        """Side of each stage's output feature map, in pixels."""
        return stage_sizes(((stage.stride, stage.downsample) for stage in self.stages), self.stem.kernel_size)

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        fields = ("stem", "stages", "batch_norm", "se_ratio", "dropout", "pool_size", "num_classes", "activation",
                  "pooling", "logit_scale")
        check_keys("spec", data, fields)
        if "stages" not in data:
            raise SpecError("stages: missing; give a list of 1 to 6 stages, e.g. "
                            '[{"blocks": 2, "channels": 64}]')
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list) or not STAGES_RANGE[0] <= len(raw_stages) <= STAGES_RANGE[1]:
            n = len(raw_stages) if isinstance(raw_stages, list) else type(raw_stages).__name__
            raise SpecError(f"stages: expected a list of {STAGES_RANGE[0]} to {STAGES_RANGE[1]} stages, got {n}")
        stages = tuple(_stage_from_dict(i, s) for i, s in enumerate(raw_stages))

        stem_raw = check_keys("stem", data.get("stem", {}), ("channels", "kernel_size", "whiten"))
        whiten = check_bool("stem.whiten", stem_raw.get("whiten", False))
        kernel_size = stem_raw.get("kernel_size", 3)
        if kernel_size == 2 and whiten is False:
            raise SpecError("stem.kernel_size: 2 is for a whitened stem only (its frozen 2x2 conv has no padding); "
                            "turn stem.whiten on, or use 1, 3, 5 or 7")
        stem = StemSpec(
            channels=check_int("stem.channels", stem_raw.get("channels", stages[0].channels), *CHANNELS_RANGE),
            kernel_size=check_choice("stem.kernel_size", kernel_size,
                                     WHITENED_STEM_KERNEL_SIZES if whiten else KERNEL_SIZES),
            whiten=whiten,
        )
        spec = cls(
            stem=stem,
            stages=stages,
            batch_norm=check_bool("batch_norm", data.get("batch_norm", True)),
            se_ratio=check_int("se_ratio", data.get("se_ratio", 0), *SE_RATIO_RANGE),
            dropout=check_float("dropout", data.get("dropout", 0.0), *DROPOUT_RANGE),
            pool_size=check_int("pool_size", data.get("pool_size", 4), 1, IMAGE_SIZE),
            num_classes=check_int("num_classes", data.get("num_classes", 10), *CLASSES_RANGE),
            activation=check_choice("activation", data.get("activation", "relu"), ACTIVATIONS),
            pooling=check_choice("pooling", data.get("pooling", "avg"), POOLINGS),
            logit_scale=check_float("logit_scale", data.get("logit_scale", 1.0), *LOGIT_SCALE_RANGE),
        )
        spec._check_geometry()
        return spec

    def _check_geometry(self) -> None:
        size = stem_size(self.stem.kernel_size)
        for i, stage in enumerate(self.stages):
            if size < 2 and stage.stride == 2:
                raise SpecError(f"stages[{i}].stride: the feature map is already {size}x{size} here, so stride 2 "
                                f"would shrink it below 1 pixel; use stride 1 or fewer stride-2 stages")
            size = stage_out(size, stage.stride, stage.downsample)
        if self.pool_size > size:
            raise SpecError(f"pool_size: {self.pool_size} is larger than the last feature map ({size}x{size}); "
                            f"allowed: 1 to {size}")


def _stage_from_dict(i: int, data: Any) -> StageSpec:
    where = f"stages[{i}]"
    check_keys(where, data, tuple(f.name for f in dataclasses.fields(StageSpec)))
    return StageSpec(
        blocks=check_int(f"{where}.blocks", data.get("blocks", 2), *BLOCKS_RANGE),
        channels=check_int(f"{where}.channels", data.get("channels", 64), *CHANNELS_RANGE),
        kernel_size=check_choice(f"{where}.kernel_size", data.get("kernel_size", 3), KERNEL_SIZES),
        shortcut_kernel_size=check_choice(f"{where}.shortcut_kernel_size",
                                          data.get("shortcut_kernel_size", 1), SHORTCUT_KERNEL_SIZES),
        # the usual CIFAR ResNet halves the map at every stage but the first
        stride=check_choice(f"{where}.stride", data.get("stride", 1 if i == 0 else 2), STRIDES),
        downsample=check_choice(f"{where}.downsample", data.get("downsample", "stride"), DOWNSAMPLES),
    )


def load_json_file(path: str | Path) -> Any:
    """Read a JSON file, turning every way it can fail into one SpecError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read it as text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
