"""The Design page, run headless through Streamlit's AppTest: real widgets, real displayed values.

Every expected number comes from core.design.budget, so the page is held to the same arithmetic as the CLI.
"""
import json
import re
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import SelectSlider, Slider

from core.design.budget import BUDGET, count, fit_to_budget
from core.design.link import from_query, to_query
from core.design.presets import PRESETS, preset_spec
from core.design.spec import BLOCKS_RANGE, ArchSpec, SpecError
from tests.helpers import APP, assert_clean

DEFAULT = "resnet26-seed"


def open_app(query: dict | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=30)
    app.query_params.update(query or {})
    return app.run()


def metric(app: AppTest, label: str):
    return next(m for m in app.metric if m.label == label)


def shown_params(app: AppTest) -> int:
    return int(metric(app, "Parameters").value.replace(",", ""))


def train_button(app: AppTest):
    return next(b for b in app.button if b.label == "Train this design")


def stage_control(app: AppTest, stage: int, field: str):
    return app.get_by_key(f"design:stages.{stage}.{field}")


def with_stage(spec: ArchSpec, stage: int, **changes) -> ArchSpec:
    data = spec.to_dict()
    data["stages"][stage].update(changes)
    return ArchSpec.from_dict(data)


def test_app_opens_on_the_design_page_with_the_default_preset():
    app = open_app()
    assert_clean(app)
    assert app.title[0].value == "Design"
    assert metric(app, "Parameters").value == f"{count(preset_spec(DEFAULT)).params:,}"
    assert metric(app, "Parameters").delta == f"{BUDGET - count(preset_spec(DEFAULT)).params:,} to spare"
    assert not train_button(app).disabled
    assert app.session_state["design"] == preset_spec(DEFAULT).to_dict()


@pytest.mark.parametrize("page, title", [("train", "Train"), ("runs", "Runs"), ("classify", "Classify")])
def test_every_other_page_opens(page, title):
    app = open_app()
    app.switch_page(f"pages/{page}.py").run()
    assert_clean(app)
    assert app.title[0].value == title


@pytest.mark.parametrize("field, value", [("channels", 256), ("blocks", 5)])
def test_changing_a_stage_changes_the_displayed_total(field, value):
    app = open_app()
    stage_control(app, 3, field).set_value(value).run()
    assert_clean(app)
    expected = count(with_stage(preset_spec(DEFAULT), 3, **{field: value})).params
    assert shown_params(app) == expected != count(preset_spec(DEFAULT)).params
    assert app.dataframe[0].value.set_index("Part").loc["Stage 3", "Parameters"] == \
        count(with_stage(preset_spec(DEFAULT), 3, **{field: value})).stages[3].params


def test_resnet18_is_over_budget_and_cannot_be_trained():
    app = open_app()
    app.get_by_key("design:preset").set_value("resnet18").run()
    assert_clean(app)
    over = count(preset_spec("resnet18")).params - BUDGET
    assert shown_params(app) == 11_173_962
    assert metric(app, "Parameters").delta == f"{over:,} over budget"
    assert any(f"Over budget by {over:,} parameters. Stage 3 costs the most" in e.value for e in app.error)
    assert train_button(app).disabled
    reason = f"Can't train: the design is {over:,} parameters over budget."
    assert train_button(app).help == reason
    assert any(c.value == reason for c in app.caption)


def test_fit_to_budget_brings_the_design_within_budget_and_lists_the_changes():
    app = open_app()
    app.get_by_key("design:preset").set_value("resnet18").run()
    next(b for b in app.button if b.label == "Fit to budget").click().run()
    assert_clean(app)
    fit = fit_to_budget(preset_spec("resnet18"), multiple_of=8)
    assert shown_params(app) == fit.params_after <= BUDGET
    report = next(s.value for s in app.success if s.value.startswith("Every width scaled"))
    assert fit.changes and all(change in report for change in fit.changes)
    assert stage_control(app, 3, "channels").value == fit.spec.stages[3].channels
    assert not train_button(app).disabled


def test_fit_to_budget_lands_on_the_sliders_steps_and_never_shrinks_the_stem_below_one():
    """Issue 27, item 14: Fit to budget gave widths of 149, 129 and 387 and shrank an 8-channel stem to 6, while
    the sliders step by 8."""
    app = open_app({"stem": ["8"], "stage": ["2x160s1", "2x160s2", "2x400s2"]})
    next(b for b in app.button if b.label == "Fit to budget").click().run()
    assert_clean(app)
    design = app.session_state["design"]
    widths = [design["stem"]["channels"]] + [stage["channels"] for stage in design["stages"]]
    assert all(width % 8 == 0 for width in widths) and widths[0] == 8, widths
    assert shown_params(app) <= BUDGET and shown_params(app) > BUDGET * 0.9
    assert all(isinstance(stage_control(app, i, "channels"), SelectSlider) for i in range(3))


def test_a_reload_or_shared_link_keeps_the_preset_the_design_started_from():
    """Issue 27, item 14: a modified preset came back from a reload or a shared link as "your own design"."""
    app = open_app()
    app.get_by_key("design:preset").set_value("resnet20").run()
    stage_control(app, 0, "blocks").set_value(4).run()
    link = {key: app.query_params.get_all(key) if hasattr(app.query_params, "get_all") else app.query_params[key]
            for key in app.query_params}
    assert link["preset"] in ("resnet20", ["resnet20"])
    again = open_app(link)  # a reload: a new session with the link
    assert_clean(again)
    assert again.get_by_key("design:preset").value == "resnet20"
    assert any(b.label == "Modified: revert to resnet20" for b in again.button)
    assert again.session_state["design"]["stages"][0]["blocks"] == 4


def test_the_laptop_preset_speaks_to_a_user_not_to_its_developers():
    app = open_app()
    app.get_by_key("design:preset").set_value("laptop").run()
    about = " ".join(m.value for m in app.markdown)
    assert "125M MACs an image" in about
    assert not re.search(r"issue \d+|docs/|\.md\b", about), about


def test_a_modified_preset_can_be_reverted():
    app = open_app()
    stage_control(app, 0, "blocks").set_value(1).run()
    revert = next(b for b in app.button if b.label == f"Modified: revert to {DEFAULT}")
    revert.click().run()
    assert_clean(app)
    assert stage_control(app, 0, "blocks").value == preset_spec(DEFAULT).stages[0].blocks
    assert shown_params(app) == count(preset_spec(DEFAULT)).params
    assert not any(b.label.startswith("Modified") for b in app.button)


def test_blocks_and_widths_are_sliders_over_multiples_of_8_and_the_presets_own_widths():
    app = open_app()
    for stage in range(4):
        blocks = stage_control(app, stage, "blocks")
        assert isinstance(blocks, Slider) and (blocks.min, blocks.max) == BLOCKS_RANGE
        assert isinstance(stage_control(app, stage, "channels"), SelectSlider)
    stem = app.get_by_key("design:stem.channels")
    assert isinstance(stem, SelectSlider) and stem.value == preset_spec(DEFAULT).stem.channels
    widths = [int(w) for w in stage_control(app, 1, "channels").options]
    assert widths == sorted({*range(8, 513, 8), 100})  # 100: the preset's width, not a multiple of 8
    assert app.get_by_key("design:stages.1.channels:exact").value == 100


def test_moving_sliders_shows_the_count_core_params_gives(tmp_path):
    app = open_app()
    stage_control(app, 3, "blocks").set_value(5).run()
    stage_control(app, 1, "channels").set_value(256).run()
    app.get_by_key("design:stages.2.channels:exact").set_value(150).run()  # a width off the slider's steps
    assert_clean(app)
    assert stage_control(app, 2, "channels").value == 150  # the slider follows its exact box
    (tmp_path / "design.json").write_text(json.dumps(app.session_state["design"]))
    cli = subprocess.run([sys.executable, "-m", "core", "params", "--config", str(tmp_path / "design.json")],
                         cwd=APP.parent, capture_output=True, text=True, check=True)
    report = json.loads(cli.stdout)
    assert shown_params(app) == report["params"] != count(preset_spec(DEFAULT)).params
    assert metric(app, "MACs per image").value == report["summary"].split(", ")[1].removesuffix(" MACs per image")
    assert app.session_state["design"]["stages"][3]["blocks"] == 5


def test_a_width_moved_again_before_the_page_redrew_its_exact_box_never_raises():
    """Issue 27: three quick presses of the right arrow on a Channels slider. The browser sends the next press with
    the exact box's value from before the last redraw: the slider's callback once deleted the box's key, and the
    box's callback, run in the same rerun, then raised KeyError in place of the page."""
    app = open_app()
    slider, exact = stage_control(app, 2, "channels"), app.get_by_key("design:stages.2.channels:exact")
    before = exact.value
    slider.set_value(208).run()
    assert_clean(app)
    stage_control(app, 2, "channels").set_value(216)
    app.get_by_key("design:stages.2.channels:exact").set_value(before)  # what the browser still held
    app.run()
    assert_clean(app)
    width = app.session_state["design"]["stages"][2]["channels"]
    assert stage_control(app, 2, "channels").value == app.get_by_key("design:stages.2.channels:exact").value == width
    assert shown_params(app) == count(with_stage(preset_spec(DEFAULT), 2, channels=width)).params


def test_over_or_under_budget_shows_in_colour_beside_the_sliders():
    app = open_app()
    gauge = app.get("progress")[0].proto
    assert gauge.text.startswith(":green[") and "21,190 to spare" in gauge.text
    stage_control(app, 3, "channels").set_value(512).run()
    over = count(with_stage(preset_spec(DEFAULT), 3, channels=512)).params - BUDGET
    gauge = app.get("progress")[0].proto
    assert gauge.text.startswith(":red[") and f"{over:,} over budget" in gauge.text and gauge.value == 100
    app.get_by_key("design_fit_near_controls").click().run()  # one click back under
    assert_clean(app)
    assert shown_params(app) <= BUDGET and app.get("progress")[0].proto.text.startswith(":green[")


def test_train_hands_the_design_to_the_train_page():
    app = open_app()
    stage_control(app, 0, "channels").set_value(96).run()
    train_button(app).click().run()
    assert_clean(app)
    assert app.title[0].value == "Train"
    assert app.session_state["design"] == with_stage(preset_spec(DEFAULT), 0, channels=96).to_dict()


def test_the_design_survives_a_page_switch():
    app = open_app()
    app.get_by_key("design:stages.2.channels:exact").set_value(150).run()
    app.switch_page("pages/runs.py").run()
    app.switch_page("pages/design.py").run()
    assert_clean(app)
    assert stage_control(app, 2, "channels").value == 150
    assert shown_params(app) == count(with_stage(preset_spec(DEFAULT), 2, channels=150)).params


def test_an_impossible_stride_shows_the_spec_error_and_keeps_the_last_valid_numbers():
    app = open_app()
    app.get_by_key("design:stage_count").set_value(6).run()  # new stages halve the map: ... 4, 2, 1
    assert app.get_by_key("design:pool_size").value == 1     # the 4x4 pool no longer fits the 1x1 map
    assert any("Pool size lowered to 1" in toast.value for toast in app.toast)
    last_valid = shown_params(app)
    stage_control(app, 0, "stride").set_value(2).run()       # now stage 5 would halve a 1x1 map
    assert_clean(app)
    assert any("stages[5].stride" in e.value for e in app.error)
    assert shown_params(app) == last_valid
    assert train_button(app).disabled


def test_a_bad_upload_shows_an_error_not_an_exception():
    app = open_app()
    uploader = app.get_by_key("design_upload")
    uploader.upload("broken.json", b'{"stages": [', "application/json").run()
    assert_clean(app)
    assert any("broken.json: not valid JSON" in e.value for e in app.error)
    app.get_by_key("design_upload").set_value(
        ("wide.json", json.dumps({"stages": [{"channels": 5000}]}).encode(), "application/json")).run()
    assert_clean(app)
    assert any("stages[0].channels: 5000 is out of range" in e.value for e in app.error)
    assert shown_params(app) == count(preset_spec(DEFAULT)).params  # the design is untouched


def test_uploading_a_run_config_loads_its_architecture():
    config = {"arch": PRESETS["resnet20"]["arch"], "train": {"epochs": 3}, "preset": "resnet20"}
    app = open_app()
    app.get_by_key("design_upload").upload("run.json", json.dumps(config).encode(), "application/json").run()
    assert_clean(app)
    assert not app.error
    assert shown_params(app) == count(preset_spec("resnet20")).params
    assert app.get_by_key("design:preset").value == "resnet20"


def test_the_link_in_the_address_bar_opens_the_same_design():
    app = open_app()
    stage_control(app, 1, "channels").set_value(120).run()
    stage_control(app, 1, "kernel_size").set_value(5).run()
    shared = open_app(dict(app.query_params))
    assert_clean(shared)
    assert shown_params(shared) == shown_params(app) == count(
        with_stage(preset_spec(DEFAULT), 1, channels=120, kernel_size=5)).params
    assert stage_control(shared, 1, "kernel_size").value == 5


def test_a_broken_link_says_what_is_wrong_and_opens_the_default():
    app = open_app({"stage": ["3y128"]})
    assert_clean(app)
    assert any("stage 0: '3y128' is not in the form" in e.value for e in app.error)
    assert shown_params(app) == count(preset_spec(DEFAULT)).params


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_a_link(name):
    assert from_query(to_query(preset_spec(name))) == preset_spec(name)


def test_a_link_keeps_every_field_and_leaves_defaults_out():
    spec = ArchSpec.from_dict({
        "stem": {"channels": 24, "kernel_size": 5},
        "stages": [{"blocks": 1, "channels": 24, "kernel_size": 7, "shortcut_kernel_size": 3, "stride": 2},
                   {"blocks": 2, "channels": 48, "stride": 1}, {"blocks": 1, "channels": 64, "downsample": "maxpool"}],
        "batch_norm": False, "se_ratio": 4, "dropout": 0.25, "pool_size": 8, "num_classes": 100})
    query = to_query(spec)
    assert query == {"stem": ["24k5"], "stage": ["1x24k7p3s2", "2x48s1", "1x64s2m"], "bn": ["0"], "se": ["4"],
                     "dropout": ["0.25"], "pool": ["8"], "classes": ["100"]}
    assert from_query(query) == spec
    assert to_query(preset_spec(DEFAULT)) == {"stem": ["128"], "stage": ["3x128s1", "3x100s2", "3x164s2", "3x200s2"]}


@pytest.mark.parametrize("query, message", [
    ({"stage": ["3x128"], "colour": ["red"]}, "colour: not a design parameter"),
    ({"stem": ["64"]}, "stage: missing"),
    ({"stage": ["3x128", "big"]}, "stage 1: 'big' is not in the form"),
    ({"stage": ["3x128"], "bn": ["yes"]}, "bn: 'yes' is not allowed"),
    ({"stage": ["3x128"], "pool": ["4.5"]}, "pool: '4.5' is not a whole number"),
    ({"stage": ["3x128"], "dropout": ["lots"]}, "dropout: 'lots' is not a number"),
    ({"stage": ["3x2000"]}, "stages[0].channels: 2000 is out of range"),
    ({"stage": ["3x128s2mm"]}, "stage 0: '3x128s2mm' is not in the form"),
    ({"stage": ["3x128"], "act": ["tanh"]}, "activation: 'tanh' is not allowed; allowed values: relu, gelu"),
    ({"stage": ["3x128"], "logits": ["big"]}, "logits: 'big' is not a number"),
    ({"stage": ["3x128"], "logits": ["0"]}, "logit_scale: 0.0 is out of range; allowed: 0.01 to 10.0"),
])
def test_a_bad_link_raises_one_clear_spec_error(query, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        from_query(query)


def test_a_whitened_stem_is_a_toggle_whose_frozen_filters_are_shown_apart_from_the_budget():
    app = open_app()
    app.get_by_key("design:preset").set_value("laptop-onecycle").run()
    app.get_by_key("design:stem.whiten").set_value(True).run()
    assert_clean(app)
    plain = preset_spec("laptop-onecycle").to_dict()
    whitened = ArchSpec.from_dict({**plain, "stem": {"channels": 32, "whiten": True}})
    cost = count(whitened)
    assert shown_params(app) == cost.params and cost.frozen_params == 1_458
    assert f"{cost.frozen_params:,} frozen weights" in metric(app, "Parameters").help
    assert any(f"plus {cost.frozen_params:,} frozen (the whitened stem's filters)" in c.value for c in app.caption)
    assert to_query(whitened)["stem"] == ["32w"] and from_query(to_query(whitened)) == whitened


def test_laptop_s_2x2_whitened_stem_shows_airbench_s_maps_and_is_refused_unwhitened_with_what_to_do():
    app = open_app()
    app.get_by_key("design:preset").set_value("laptop").run()
    assert_clean(app)
    assert app.get_by_key("design:stem.kernel_size").value == 2
    table = app.dataframe[0].value.set_index("Part")
    assert list(table["Output"][:4]) == ["31×31", "15×15", "7×7", "3×3"]
    assert table.loc["Stem", "MACs"] == count(preset_spec("laptop")).stem_macs
    app.get_by_key("design:stem.whiten").set_value(False).run()
    assert any("stem.kernel_size: 2 is for a whitened stem only" in e.value and "turn stem.whiten on" in e.value
               for e in app.error)
    app.get_by_key("design:stem.kernel_size").set_value(3).run()
    assert not app.error
    assert list(app.dataframe[0].value.set_index("Part")["Output"][:4]) == ["32×32", "16×16", "8×8", "4×4"]


def test_the_activation_is_a_choice_for_every_block_that_costs_no_parameters_and_travels_in_the_link():
    app = open_app()
    app.get_by_key("design:preset").set_value("laptop").run()
    assert app.get_by_key("design:activation").value == "gelu"
    assert app.query_params["act"] in ("gelu", ["gelu"])
    params = shown_params(app)
    app.get_by_key("design:activation").set_value("relu").run()
    assert_clean(app)
    assert shown_params(app) == params == count(preset_spec("laptop").replace(activation="relu")).params
    assert "act" not in app.query_params  # the default is left out of the link
    revert = next(b for b in app.button if b.label == "Modified: revert to laptop")
    revert.click().run()
    assert app.get_by_key("design:activation").value == "gelu"
    assert app.session_state["design"]["activation"] == "gelu"


def test_the_head_s_pooling_and_logit_scale_cost_no_parameters_travel_in_the_link_and_show_in_the_breakdown():
    app = open_app()
    app.get_by_key("design:preset").set_value("resnet20").run()
    assert (app.get_by_key("design:pooling").value, app.get_by_key("design:logit_scale").value) == ("avg", 1.0)
    params = shown_params(app)
    app.get_by_key("design:pooling").set_value("max").run()
    app.get_by_key("design:logit_scale").set_value(0.125).run()
    assert_clean(app)
    assert shown_params(app) == params
    assert app.session_state["design"]["pooling"] == "max" and app.session_state["design"]["logit_scale"] == 0.125
    assert app.query_params["pooling"] in ("max", ["max"]) and app.query_params["logits"] in ("0.125", ["0.125"])
    assert any("8×8 max pool" in c.value and "multiplied by 0.125" in c.value for c in app.caption)
    revert = next(b for b in app.button if b.label == "Modified: revert to resnet20")
    revert.click().run()
    assert (app.get_by_key("design:pooling").value, app.get_by_key("design:logit_scale").value) == ("avg", 1.0)
    assert "pooling" not in app.query_params and "logits" not in app.query_params  # defaults stay out of the link


def test_a_preset_shown_again_is_unchanged_though_its_controls_filled_in_defaults():
    """The controls add fields a preset's JSON leaves out (whiten false, downsample stride, relu): not a change."""
    app = open_app()
    app.get_by_key("design:preset").set_value("resnet20").run()
    app.run()
    assert any(b.label == "Unchanged from resnet20" for b in app.button)
    assert not any(b.label.startswith("Modified") for b in app.button)


def test_max_pool_downsampling_is_a_choice_of_stride_2_stages_that_costs_macs_and_no_parameters():
    app = open_app()
    app.get_by_key("design:preset").set_value("laptop-onecycle").run()
    params = shown_params(app)
    assert app.get_by_key("design:stages.0.downsample").value == "stride"
    app.get_by_key("design:stages.1.downsample").set_value("maxpool").run()
    assert_clean(app)
    plain = preset_spec("laptop-onecycle").to_dict()
    pooled = ArchSpec.from_dict({**plain, "stages": [{**s, "downsample": "maxpool" if i == 1 else "stride"}
                                                     for i, s in enumerate(plain["stages"])]})
    assert shown_params(app) == params == count(pooled).params
    assert app.query_params["stage"][1].endswith("s2m")
    app.get_by_key("design:stages.1.stride").set_value(1).run()  # a stage that keeps its map: nothing to choose
    assert app.get_by_key("design:stages.1.downsample").disabled
