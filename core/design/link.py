"""A design as a short, readable link: ?stem=128&stage=3x128s1&stage=3x100s2&pool=2

One `stage` parameter per stage: blocks x channels, then kK (kernel), pP (projection-shortcut
kernel), sS (stride) and m for max-pool downsampling; `stem` is channels, then kK, then w for a
whitened stem. A field at the value ArchSpec.from_dict gives it by default is left out, except the
stride, whose default depends on the stage's place. Parsing checks the form of each value;
ArchSpec.from_dict checks the numbers.
Network-wide fields have a parameter each: bn=0, se=16, dropout=0.1, pool=2, classes=100, act=gelu, pooling=max,
logits=0.125.
`preset=NAME` names the preset the design started from (a reload or a shared link still says so once
the design was changed); the design is in the other parameters.
"""
from __future__ import annotations

import re

from core.design.spec import ArchSpec, SpecError

DEFAULTS = ArchSpec.from_dict({"stages": [{}]})  # what from_dict fills in for a field left out
NETWORK_WIDE = {"bn": "batch_norm", "se": "se_ratio", "dropout": "dropout", "pool": "pool_size",
                "classes": "num_classes", "act": "activation", "pooling": "pooling", "logits": "logit_scale"}
KEYS = ("stem", "stage", *NETWORK_WIDE)
PRESET = "preset"
STEM = re.compile(r"(?P<channels>\d+)(?:k(?P<kernel_size>\d+))?")
STAGE = re.compile(r"(?P<blocks>\d+)x(?P<channels>\d+)(?:k(?P<kernel_size>\d+))?"
                   r"(?:p(?P<shortcut_kernel_size>\d+))?(?:s(?P<stride>\d+))?(?P<maxpool>m)?")


def to_query(spec: ArchSpec, preset: str | None = None) -> dict[str, list[str]]:
    """The link's parameters, each a list of values as st.query_params.get_all gives them; `preset`: the preset
    the design started from."""
    default_stage = DEFAULTS.stages[0]

    def stage(s) -> str:
        kernel = f"k{s.kernel_size}" if s.kernel_size != default_stage.kernel_size else ""
        shortcut = (f"p{s.shortcut_kernel_size}"
                    if s.shortcut_kernel_size != default_stage.shortcut_kernel_size else "")
        maxpool = "m" if s.downsample == "maxpool" else ""
        return f"{s.blocks}x{s.channels}{kernel}{shortcut}s{s.stride}{maxpool}"

    stem_kernel = f"k{spec.stem.kernel_size}" if spec.stem.kernel_size != DEFAULTS.stem.kernel_size else ""
    whiten = "w" if spec.stem.whiten else ""
    query = {"stem": [f"{spec.stem.channels}{stem_kernel}{whiten}"], "stage": [stage(s) for s in spec.stages]}
    for key, field in NETWORK_WIDE.items():
        value = getattr(spec, field)
        if value != getattr(DEFAULTS, field):
            query[key] = [_text(value)]
    return query | ({PRESET: [preset]} if preset else {})


def from_query(query: dict[str, list[str]]) -> ArchSpec:
    """The spec a link names; a SpecError says which parameter is wrong and how it should look."""
    unknown = sorted(set(query) - {*KEYS, PRESET})
    if unknown:
        raise SpecError(f"{unknown[0]}: not a design parameter; a design link uses {', '.join(KEYS)}")
    if not query.get("stage"):
        raise SpecError("stage: missing; give one per stage, e.g. stage=3x128s1&stage=3x256s2")
    data = {"stages": [_stage(f"stage {i}", text) for i, text in enumerate(query["stage"])]}
    if query.get("stem"):
        text = query["stem"][-1]
        data["stem"] = _parts("stem", text.removesuffix("w"), STEM, "64, 64k3 or 64k3w (whitened)")
        if text.endswith("w"):
            data["stem"]["whiten"] = True
    for key, field in NETWORK_WIDE.items():
        if query.get(key):
            data[field] = _value(key, query[key][-1], type(getattr(DEFAULTS, field)))
    return ArchSpec.from_dict(data)


def _stage(where: str, text: str) -> dict:
    parts = _parts(where, text, STAGE, "3x128s2, 3x128k5p3s2 or 3x128s2m (max-pool downsampling)")
    return parts | ({"downsample": "maxpool"} if parts.pop("maxpool", None) else {})


def _parts(where: str, text: str, form: re.Pattern, example: str) -> dict[str, int | str]:
    match = form.fullmatch(text)
    if match is None:
        raise SpecError(f"{where}: {text!r} is not in the form {example}")
    return {name: int(value) if value.isdigit() else value for name, value in match.groupdict().items()
            if value is not None}


def _text(value: bool | int | float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:g}" if isinstance(value, float) else str(int(value))  # True -> "1"


def _value(key: str, text: str, kind: type) -> bool | int | float | str:
    if kind is str:  # a choice: ArchSpec.from_dict names the allowed ones
        return text
    if kind is bool:
        if text not in ("0", "1"):
            raise SpecError(f"{key}: {text!r} is not allowed; use 1 for on, 0 for off")
        return text == "1"
    try:
        return kind(text)
    except ValueError:
        raise SpecError(f"{key}: {text!r} is not a{' whole' if kind is int else ''} number") from None
