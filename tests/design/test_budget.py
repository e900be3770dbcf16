"""Counting without building: exact against the built model, and the seeds' published counts."""
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.design.budget import count, fit_to_budget
from core.design.presets import PRESETS, preset_for_cpu, preset_spec
from core.design.spec import ArchSpec, SpecError, stage_out, stem_size
from core.nn.model import build_model


def built_params(spec: ArchSpec, trainable: bool = True) -> int:
    """The built model's trainable parameters (what the budget counts), or its frozen ones."""
    with torch.device("meta"):  # shapes only: a 1024-wide, 16-block net costs nothing to build
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)


@pytest.mark.parametrize("name, expected", [
    ("resnet26-seed", 4_978_810), ("resnet24-seed", 4_969_776), ("resnet18", 11_173_962),
])
def test_presets_reproduce_their_sources_counts(name, expected):
    assert count(preset_spec(name)).params == expected == built_params(preset_spec(name))
    assert PRESETS[name]["source_params"] == expected


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_counts_exactly(name):
    assert count(preset_spec(name)).params == built_params(preset_spec(name))


def random_spec(rng: random.Random) -> ArchSpec:
    """A random valid spec over the whole allowed range, SE, BN-off, odd kernels, GELU, max-pooled heads with scaled
    logits and 2x2 whitened stems (31x31 maps, which max pooling floors) included."""
    n = rng.randint(1, 6)
    whiten = rng.random() < 0.3
    stem_kernel = rng.choice([1, 2, 2, 3, 5, 7] if whiten else [1, 3, 5, 7])
    size, stages = stem_size(stem_kernel), []
    for _ in range(n):
        stride = rng.choice([1, 2]) if size > 1 else 1
        downsample = rng.choice(["stride", "maxpool"])
        size = stage_out(size, stride, downsample)
        stages.append({"blocks": rng.choice([1, 1, 2, 3, 16]), "channels": rng.choice([4, 5, 17, 64, 100, 1024]),
                       "kernel_size": rng.choice([1, 3, 5, 7]), "shortcut_kernel_size": rng.choice([1, 3]),
                       "stride": stride, "downsample": downsample})
    return ArchSpec.from_dict({
        "stem": {"channels": rng.randint(4, 200), "kernel_size": stem_kernel, "whiten": whiten},
        "stages": stages, "batch_norm": rng.random() < 0.7,
        "se_ratio": rng.choice([0, 0, 1, 4, 16, 975]), "dropout": rng.choice([0.0, 0.3]),
        "pool_size": rng.randint(1, size), "num_classes": rng.choice([10, 2, 100]),
        "activation": rng.choice(["relu", "gelu"]), "pooling": rng.choice(["avg", "max"]),
        "logit_scale": rng.choice([1.0, 0.125]),
    })


def test_count_equals_built_model_for_250_random_specs():
    rng = random.Random(1234)
    for _ in range(250):
        spec = random_spec(rng)
        assert count(spec).params == built_params(spec), spec.to_json()
        assert count(spec).frozen_params == built_params(spec, trainable=False), spec.to_json()


def test_a_whitened_stem_s_frozen_filters_are_counted_apart_from_the_budget():
    plain = ArchSpec.from_dict({"stem": {"channels": 32}, "stages": [{"blocks": 1, "channels": 64}]})
    whitened = plain.replace(stem={"channels": 32, "whiten": True})
    cost = count(whitened)
    assert cost.frozen_params == 54 * 3 * 3 * 3 and count(plain).frozen_params == 0  # 27 eigenvectors and negatives
    assert cost.stem_params == 54 * 32 + 2 * 32  # then a trainable 1x1 conv and BatchNorm
    assert cost.params == count(plain).params - count(plain).stem_params + cost.stem_params
    # airbench's 2x2 whitening: 12 eigenvectors and negatives, no padding, so the 1x1 conv after it runs at 31x31
    small = whitened.replace(stem={"channels": 32, "kernel_size": 2, "whiten": True})
    assert count(small).frozen_params == built_params(small, trainable=False) == 24 * 3 * 2 * 2
    assert count(small).stem_macs == (3 * 2 * 2 + 32) * 24 * 31 * 31 and small.feature_sizes == [31]


def test_laptop_has_airbench94_s_maps_and_a_fifth_fewer_macs_than_on_32x32_ones():
    laptop = preset_spec("laptop")
    assert laptop.feature_sizes == [15, 7, 3] and laptop.pool_size == 3
    on_32 = laptop.replace(stem={**laptop.to_dict()["stem"], "kernel_size": 3}, pool_size=4)
    assert on_32.feature_sizes == [16, 8, 4]
    assert 0.75 < count(laptop).macs / count(on_32).macs < 0.82  # 125M against 157M
    assert count(laptop).params == built_params(laptop) < count(on_32).params  # 24 whitened channels, not 54


def test_macs_agree_with_torch_flop_counter():
    rng = random.Random(99)
    specs = [preset_spec("resnet26-seed"), preset_spec("se-resnet-seed")] + [random_spec(rng) for _ in range(20)]
    for spec in specs:
        with torch.device("meta"):
            model = build_model(spec).eval()
            x = torch.empty(1, 3, 32, 32)
        with FlopCounterMode(display=False) as counter:
            model(x)
        macs = counter.get_total_flops() / 2
        assert abs(count(spec).macs - macs) <= 0.01 * macs, spec.to_json()


def test_breakdown_adds_up_and_reports_geometry():
    cost = count(preset_spec("resnet26-seed"))
    assert cost.params == cost.stem_params + sum(s.params for s in cost.stages) + cost.head_params
    assert [s.out_size for s in cost.stages] == [32, 16, 8, 4]
    for stage in cost.stages:
        assert stage.params == sum(b.params for b in stage.blocks)
        for b in stage.blocks:
            assert b.params == b.convs + b.bn + b.shortcut + b.se
    # stem 3x3 (rf 3), then 6 convs at jump 1 (rf 15), stride-2 conv adds 2, then 5 convs at jump 2 ...
    assert cost.stages[0].receptive_field == 15
    assert cost.stages[1].receptive_field == 15 + 2 + 5 * 4


def test_max_pool_downsampling_keeps_parameters_and_maps_and_costs_the_first_conv_at_full_size():
    strided = ArchSpec.from_dict({"stem": {"channels": 32}, "stages": [{"blocks": 2, "channels": 64, "stride": 2},
                                                                      {"blocks": 1, "channels": 96, "stride": 2}]})
    pooled = strided.replace(stages=[{**s, "downsample": "maxpool"} for s in strided.to_dict()["stages"]])
    a, b = count(strided), count(pooled)
    assert b.params == a.params == built_params(pooled) and pooled.feature_sizes == strided.feature_sizes == [16, 8]
    # each stage's first conv at its input's size: 4x its MACs; the rest, shortcut included, as before
    assert b.macs - a.macs == 32 * 64 * 9 * (32 * 32 - 16 * 16) + 64 * 96 * 9 * (16 * 16 - 8 * 8)
    # the 2x2 window adds one pixel at the jump before it: stem 3, +2 (conv), +1 (pool), +4, +4 (second block)
    assert [s.receptive_field for s in a.stages] == [3 + 2 + 4 + 4 + 4, 17 + 4 + 8]
    assert [s.receptive_field for s in b.stages] == [3 + 2 + 1 + 4 + 4 + 4, 18 + 4 + 2 + 8]
    out = build_model(pooled)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # down to a 1x1 map, as strided convs take it
    deep = ArchSpec.from_dict({"stages": [{"blocks": 1, "channels": 8, "stride": 2, "downsample": "maxpool"}] * 5,
                               "pool_size": 1})
    assert deep.feature_sizes == [16, 8, 4, 2, 1]
    assert build_model(deep).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_fit_to_budget_scales_resnet18_to_the_largest_design_under_5m():
    fit = fit_to_budget(preset_spec("resnet18"))
    assert fit.params_before == 11_173_962
    assert fit.params_after == count(fit.spec).params <= 5_000_000
    assert fit.params_after > 4_950_000  # tight: the next factor step would overshoot
    assert len(fit.changes) == 5 and fit.changes[0].startswith("stem.channels: 64 -> ")
    # it scales up too
    small = fit_to_budget(preset_spec("resnet20"), budget=1_000_000)
    assert 900_000 < small.params_after <= 1_000_000


def test_fit_to_budget_refuses_an_impossible_budget():
    with pytest.raises(SpecError, match="narrowest widths"):
        fit_to_budget(preset_spec("resnet26-seed"), budget=1000)


def test_laptop_names_its_half_width_variant_for_cpus_that_train_in_fp32():
    """A CPU without AMX or AVX512-BF16 trains laptop in fp32 at a third of the speed: `train --preset laptop`
    takes laptop-narrow there, the same recipe at half the widths, with ReLU. Every other preset is itself
    everywhere."""
    assert preset_for_cpu("laptop", computes_bf16=False) == "laptop-narrow"
    assert preset_for_cpu("laptop", computes_bf16=True) == "laptop"
    assert {name for name in PRESETS if preset_for_cpu(name, computes_bf16=False) != name} == {"laptop"}
    wide, narrow = preset_spec("laptop"), preset_spec("laptop-narrow")
    assert [s.channels for s in narrow.stages] == [s.channels // 2 for s in wide.stages]
    # and ReLU: in fp32 GELU costs 6-13% of a step (0.94x on an AMD EPYC, 0.87x on a Xeon under the AVX2 cap), on AMX 5%
    assert (wide.activation, narrow.activation) == ("gelu", "relu")
    # and the average-pooled head: airbench's head gained on laptop, not on it (docs/PERFORMANCE.md, tenth round)
    assert (wide.pooling, wide.logit_scale, narrow.pooling, narrow.logit_scale) == ("max", 0.1111, "avg", 1.0)
    assert narrow.replace(stages=wide.to_dict()["stages"], activation="gelu", pooling="max", logit_scale=0.1111) == wide
    assert PRESETS["laptop-narrow"]["train"] == PRESETS["laptop"]["train"]
    assert (count(narrow).params, count(narrow).macs) == (523_018, 36_597_024)  # 0.52M, 37M: a fifth fewer MACs
