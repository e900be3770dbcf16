"""The architecture spec: defaults, JSON round trip, and one clear error per kind of bad input."""
import json

import pytest

import torch

from core.design.spec import ArchSpec, SpecError, stage_sizes
from core.nn.model import build_model

ISSUE_EXAMPLE = {
    "stem": {"channels": 64, "kernel_size": 3},
    "stages": [{"blocks": 2, "channels": 64, "kernel_size": 3, "shortcut_kernel_size": 1, "stride": 1},
               {"blocks": 2, "channels": 128, "kernel_size": 3, "shortcut_kernel_size": 1, "stride": 2}],
    "batch_norm": True, "se_ratio": 0, "dropout": 0.0, "pool_size": 4, "num_classes": 10,
}


def test_issue_example_round_trips_through_json():
    spec = ArchSpec.from_dict(ISSUE_EXAMPLE)
    assert spec.to_dict() == ISSUE_EXAMPLE
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec


def test_max_pool_downsampling_is_written_only_where_a_stage_has_it():
    data = {"stages": [{"channels": 32}, {"channels": 64, "downsample": "maxpool"}]}
    spec = ArchSpec.from_dict(data)
    assert [s.downsample for s in spec.stages] == ["stride", "maxpool"]
    written = spec.to_dict()["stages"]
    assert "downsample" not in written[0] and written[1]["downsample"] == "maxpool"
    assert ArchSpec.from_dict(json.loads(spec.to_json())) == spec


def test_gelu_is_written_only_where_a_design_has_it_and_builds_no_parameters():
    relu = ArchSpec.from_dict({"stages": [{"channels": 32}]})
    gelu = relu.replace(activation="gelu")
    assert relu.activation == "relu" and "activation" not in relu.to_dict()  # designs before it read as they did
    assert gelu.to_dict()["activation"] == "gelu" and ArchSpec.from_dict(json.loads(gelu.to_json())) == gelu
    relu_net, gelu_net = build_model(relu), build_model(gelu)
    assert relu_net.state_dict().keys() == gelu_net.state_dict().keys()  # a checkpoint's tensors are the same
    kinds = {type(m) for m in gelu_net.modules()}
    assert torch.nn.GELU in kinds and torch.nn.ReLU not in kinds


def test_the_head_s_pooling_and_logit_scale_are_written_only_where_a_design_has_them_and_build_no_parameters():
    plain = ArchSpec.from_dict({"stages": [{"channels": 32}], "pool_size": 2})
    head = plain.replace(pooling="max", logit_scale=0.125)
    assert (plain.pooling, plain.logit_scale) == ("avg", 1.0)
    assert not {"pooling", "logit_scale"} & set(plain.to_dict())  # designs before them read as they did
    assert ArchSpec.from_dict(json.loads(head.to_json())) == head
    plain_net, head_net = build_model(plain), build_model(head)
    assert plain_net.state_dict().keys() == head_net.state_dict().keys()  # a checkpoint's tensors are the same
    head_net.load_state_dict(plain_net.state_dict())
    features = torch.randn(2, 32, 32, 32)
    pooled = torch.nn.functional.max_pool2d(features, 2).flatten(1)
    assert torch.allclose(head_net.classify(features), plain_net.fc(pooled) * 0.125, atol=1e-6)


def test_omitted_keys_take_defaults():
    spec = ArchSpec.from_dict({"stages": [{"channels": 32}, {"channels": 48}, {"channels": 96}]})
    assert spec.stem.channels == 32  # stem follows the first stage
    assert [s.stride for s in spec.stages] == [1, 2, 2]
    assert [s.blocks for s in spec.stages] == [2, 2, 2]
    assert spec.feature_sizes == [32, 16, 8]
    assert (spec.batch_norm, spec.se_ratio, spec.dropout, spec.pool_size) == (True, 0, 0.0, 4)


def test_the_map_sizes_of_a_draft_that_does_not_validate_are_those_a_spec_has():
    draft = {"stages": [{"channels": 16, "stride": 1}, {"channels": 0, "stride": 2}, {"channels": 32, "stride": 2}]}
    with pytest.raises(SpecError):
        ArchSpec.from_dict(draft)  # a width of 0, while it is being typed
    assert stage_sizes((stage["stride"], "stride") for stage in draft["stages"]) == [32, 16, 8]
    draft["stages"][1]["channels"] = 24
    assert ArchSpec.from_dict(draft).feature_sizes == [32, 16, 8]
    assert stage_sizes([(2, "stride")] * 6) == [16, 8, 4, 2, 1, 1]  # a 1×1 map stays 1×1


def test_a_2x2_whitened_stem_gives_31x31_maps_that_max_pooling_floors_and_a_strided_conv_rounds_up():
    stem = {"channels": 16, "kernel_size": 2, "whiten": True}
    pooled = ArchSpec.from_dict({"stem": stem, "pool_size": 3,
                                 "stages": [{"channels": 16, "stride": 2, "downsample": "maxpool"}] * 3})
    assert pooled.feature_sizes == [15, 7, 3] == stage_sizes([(2, "maxpool")] * 3, 2)  # airbench94's maps
    strided = ArchSpec.from_dict({"stem": stem, "stages": [{"channels": 16, "stride": 2}] * 3})
    assert strided.feature_sizes == [16, 8, 4]
    assert ArchSpec.from_dict(json.loads(pooled.to_json())) == pooled
    with pytest.raises(SpecError, match="pool_size: 4 is larger than the last feature map \\(3x3\\)"):
        pooled.replace(pool_size=4)
    with pytest.raises(SpecError, match="stem.kernel_size: 2 is for a whitened stem only"):
        ArchSpec.from_dict({"stem": {"kernel_size": 2}, "stages": [{}]})


@pytest.mark.parametrize("change, field, allowed", [
    ({"stages": [{"kernel_size": 4}]}, "stages[0].kernel_size", "1, 3, 5, 7"),
    ({"stages": [{"shortcut_kernel_size": 5}]}, "stages[0].shortcut_kernel_size", "1, 3"),
    ({"stages": [{"stride": 3}]}, "stages[0].stride", "1, 2"),
    ({"stages": [{"downsample": "avgpool"}]}, "stages[0].downsample", "stride, maxpool"),
    ({"stages": [{"blocks": 17}]}, "stages[0].blocks", "1 to 16"),
    ({"stages": [{"blocks": 0}]}, "stages[0].blocks", "1 to 16"),
    ({"stages": [{"channels": 2000}]}, "stages[0].channels", "4 to 1024"),
    ({"stages": [{"channels": 3.5}]}, "stages[0].channels", "4 to 1024"),
    ({"stages": [{"channels": True}]}, "stages[0].channels", "4 to 1024"),
    ({"stages": [{"chanels": 64}]}, "unknown key 'chanels'", "blocks, channels"),
    ({"stages": [{}], "colour": "red"}, "unknown key 'colour'", "stem, stages"),
    ({"stages": []}, "stages", "1 to 6"),
    ({"stages": [{}] * 7}, "stages", "1 to 6"),
    ({"stages": [{}], "pool_size": 64}, "pool_size", "1 to 32"),
    ({"stages": [{}], "dropout": 1.5}, "dropout", "0.0 to 0.9"),
    ({"stages": [{}], "batch_norm": "yes"}, "batch_norm", "true or false"),
    ({"stages": [{}], "stem": {"kernel_size": 4}}, "stem.kernel_size", "1, 3, 5, 7"),
    ({"stages": [{}], "stem": {"kernel_size": 4, "whiten": True}}, "stem.kernel_size", "1, 2, 3, 5, 7"),
    ({"stages": [{}], "stem": {"whiten": 1}}, "stem.whiten", "true or false"),
    ({"stages": [{}], "activation": "swish"}, "activation", "relu, gelu"),
    ({"stages": [{}], "pooling": "min"}, "pooling", "avg, max"),
    ({"stages": [{}], "logit_scale": 0}, "logit_scale", "0.01 to 10.0"),
    ({"stages": [{"stride": 2}] * 6, "pool_size": 1}, "stages[5].stride", "stride 1"),
    ({"stages": [{}, {}, {}, {}], "pool_size": 8}, "pool_size", "1 to 4"),
    ({}, "stages", "list of 1 to 6"),
    ([1, 2], "spec", "expected an object"),
])
def test_bad_spec_names_the_field_and_allowed_values(change, field, allowed):
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(change)
    assert field in str(err.value) and allowed in str(err.value)
