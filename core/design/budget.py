"""Parameters, MACs, resolution and receptive field of an ArchSpec, counted without building it.

Pure arithmetic on the spec, so a slider can call `count` on every move. The tests hold it equal
to `sum(p.numel())` of the built model, and its MACs to torch's flop counter. `params` (what the budget
limits) are the trainable ones; a whitened stem's frozen filters are `frozen_params`, counted apart.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from core.design.spec import (CHANNELS_RANGE, IN_CHANNELS, ArchSpec, SpecError, stage_out, stem_size,
                              whitening_channels)

BUDGET = 5_000_000


@dataclass(frozen=True)
class BlockCost:
    index: int
    in_channels: int
    out_channels: int
    stride: int
    out_size: int
    convs: int       # the two main-path convs (and their biases without BN)
    bn: int          # the two main-path batch norms
    shortcut: int    # projection conv + BN, 0 for an identity shortcut
    se: int          # squeeze-and-excitation unit
    params: int
    macs: int


@dataclass(frozen=True)
class StageCost:
    index: int
    params: int
    macs: int
    out_size: int          # side of the stage's output map, pixels
    receptive_field: int   # side of the input window one output pixel sees, pixels
    blocks: list[BlockCost] = field(default_factory=list)


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int             # multiply-accumulates for one 32x32 image, forward pass
    stem_params: int
    stem_macs: int
    head_params: int
    head_macs: int
    head_features: int    # inputs of the final linear layer
    stages: list[StageCost]
    frozen_params: int = 0  # not trained, so not in `params`: a whitened stem's filters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def largest_stage(self) -> StageCost:
        return max(self.stages, key=lambda s: s.params)


def conv_params(in_ch: int, out_ch: int, k: int, bias: bool) -> int:
    return in_ch * out_ch * k * k + (out_ch if bias else 0)


def count(spec: ArchSpec) -> Cost:
    bn_on = spec.batch_norm
    bias = not bn_on

    def bn(c: int) -> int:
        return 2 * c if bn_on else 0

    k = spec.stem.kernel_size
    size = stem_size(k)
    if spec.stem.whiten:  # frozen kxk whitening conv, then a trainable 1x1 conv
        whitened = whitening_channels(k)
        frozen = conv_params(IN_CHANNELS, whitened, k, False)
        stem_params = conv_params(whitened, spec.stem.channels, 1, bias) + bn(spec.stem.channels)
        stem_macs = (IN_CHANNELS * k * k + spec.stem.channels) * whitened * size * size
    else:
        frozen = 0
        stem_params = conv_params(IN_CHANNELS, spec.stem.channels, k, bias) + bn(spec.stem.channels)
        stem_macs = IN_CHANNELS * spec.stem.channels * k * k * size * size
    receptive, jump = k, 1

    stages = []
    in_ch = spec.stem.channels
    for si, stage in enumerate(spec.stages):
        c, k, blocks = stage.channels, stage.kernel_size, []
        for bi in range(stage.blocks):
            stride = stage.stride if bi == 0 else 1
            out = stage_out(size, stride, stage.downsample)
            pooled = stride != 1 and stage.downsample == "maxpool"  # the first conv at the input's size
            convs = conv_params(in_ch, c, k, bias) + conv_params(c, c, k, bias)
            macs = (in_ch * c * (size if pooled else out) ** 2 + c * c * out * out) * k * k
            shortcut = 0
            if stride != 1 or in_ch != c:
                ks = stage.shortcut_kernel_size
                shortcut = conv_params(in_ch, c, ks, bias) + bn(c)
                macs += in_ch * c * ks * ks * out * out
            se = 0
            if spec.se_ratio > 0:
                hidden = max(1, c // spec.se_ratio)
                se = 2 * c * hidden + hidden + c
                macs += 2 * c * hidden
            params = convs + bn(c) * 2 + shortcut + se
            blocks.append(BlockCost(bi, in_ch, c, stride, out, convs, bn(c) * 2, shortcut, se, params, macs))
            receptive += (k - 1) * jump
            if pooled:  # the 2x2 window
                receptive += (stride - 1) * jump
            jump *= stride
            receptive += (k - 1) * jump
            in_ch, size = c, out
        stages.append(StageCost(si, sum(b.params for b in blocks), sum(b.macs for b in blocks),
                                size, receptive, blocks))

    pooled = size // spec.pool_size
    head_features = in_ch * pooled * pooled
    head_params = head_features * spec.num_classes + spec.num_classes
    head_macs = head_features * spec.num_classes
    return Cost(
        params=stem_params + sum(s.params for s in stages) + head_params,
        macs=stem_macs + sum(s.macs for s in stages) + head_macs,
        stem_params=stem_params, stem_macs=stem_macs,
        head_params=head_params, head_macs=head_macs, head_features=head_features,
        stages=stages, frozen_params=frozen,
    )


# ---- fit to budget ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    spec: ArchSpec
    factor: float
    params_before: int
    params_after: int
    budget: int
    changes: list[str]   # "stages[1].channels: 100 -> 96", one per width that moved


def scale_widths(spec: ArchSpec, factor: float, multiple_of: int = 1) -> ArchSpec:
    lo, hi = CHANNELS_RANGE

    def scaled(c: int) -> int:
        return min(hi, max(lo, multiple_of, round(c * factor / multiple_of) * multiple_of))

    return dataclasses.replace(
        spec,
        stem=dataclasses.replace(spec.stem, channels=scaled(spec.stem.channels)),
        stages=tuple(dataclasses.replace(s, channels=scaled(s.channels)) for s in spec.stages),
    )


def fit_to_budget(spec: ArchSpec, budget: int = BUDGET, multiple_of: int = 1) -> Fit:
    """Scale every width by the largest factor that keeps the spec within `budget` parameters.

    Parameters grow with every width, so they grow with the factor: bisect on it.
    """
    before = count(spec).params
    lo, hi = 0.0, float(CHANNELS_RANGE[1])  # factor 0 gives the narrowest allowed widths
    if count(scale_widths(spec, lo, multiple_of)).params > budget:
        raise SpecError(f"budget: even at the narrowest widths this design has more than {budget:,} parameters; "
                        f"use fewer stages or blocks, or a smaller pool size")
    for _ in range(60):
        mid = (lo + hi) / 2
        if count(scale_widths(spec, mid, multiple_of)).params <= budget:
            lo = mid
        else:
            hi = mid
    fitted = scale_widths(spec, lo, multiple_of)
    changes = []
    if fitted.stem.channels != spec.stem.channels:
        changes.append(f"stem.channels: {spec.stem.channels} -> {fitted.stem.channels}")
    for i, (a, b) in enumerate(zip(spec.stages, fitted.stages)):
        if a.channels != b.channels:
            changes.append(f"stages[{i}].channels: {a.channels} -> {b.channels}")
    return Fit(fitted, lo, before, count(fitted).params, budget, changes)
