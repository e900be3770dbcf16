"""core.units: one way to write parameters, MACs, sizes, speeds and durations, the same in the pages and the CLI."""
import json
import subprocess
import sys

import pytest

from core.design.budget import BUDGET, count
from core.design.presets import preset_spec
from core.units import bytes_text, duration_text, epoch_text, macs_text, margin_text, params_text, rate_text
from tests.helpers import ROOT


@pytest.mark.parametrize("macs, text", [(1_179_483_088, "1.18 G"), (40_813_184, "40.8 M"), (2_500, "2.5 k"),
                                        (512, "512")])
def test_macs_read_to_three_figures(macs, text):
    assert macs_text(macs) == text


@pytest.mark.parametrize("epoch, text", [(24.456410256, "24.5"), (27.0, "27"), (1.5, "1.5"), (30, "30")])
def test_an_epoch_a_time_budget_ended_within_reads_to_a_tenth_and_a_whole_one_without(epoch, text):
    assert epoch_text(epoch) == text  # the first shipped laptop run's best checkpoint read "epoch 24", not 24.5


@pytest.mark.parametrize("size, text", [(170_498_071, "170 MB"), (2_147_483_648, "2.15 GB"), (999, "999 B")])
def test_sizes_read_in_powers_of_a_thousand(size, text):
    assert bytes_text(size) == text


@pytest.mark.parametrize("seconds, text", [(4.2, "4 s"), (89, "89 s"), (600, "10 min"), (3 * 3600 + 300, "3 h 05 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration_text(seconds) == text


@pytest.mark.parametrize("rate, text", [(1234.4, "1,234"), (14.4, "14"), (0.952, "0.95"), (4.2, "4.2")])
def test_speeds_keep_two_figures_below_ten(rate, text):
    assert rate_text(rate) == text


def test_parameters_are_counted_to_the_last_one():
    assert params_text(4_978_810) == "4,978,810"
    assert margin_text(-21_190) == "21,190 to spare" and margin_text(6_173_962) == "6,173,962 over budget"


def test_the_cli_summary_writes_a_design_as_the_pages_do():
    spec = preset_spec("resnet26-seed")
    out = subprocess.run([sys.executable, "-m", "core", "params", "--preset", "resnet26-seed"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    cost = count(spec)
    assert json.loads(out.stdout)["summary"] == (f"{params_text(cost.params)} parameters "
                                                 f"({margin_text(cost.params - BUDGET)}), {macs_text(cost.macs)} "
                                                 f"MACs per image")
    assert json.loads(out.stdout)["summary"] == "4,978,810 parameters (21,190 to spare), 1.18 G MACs per image"


def test_a_duration_under_way_never_reads_as_all_of_it():
    """Issue 27, item 10: "2 min of 2 min trained · about 26 s left"."""
    from core.units import duration_of_text

    assert duration_of_text(94, 120) == "1.6 min of 2 min"
    assert duration_of_text(86, 120) == "86 s of 2 min" and duration_of_text(120, 120) == "2 min of 2 min"
    assert duration_of_text(59.6, 60) == "59.6 s of 60 s"


def test_a_searched_setting_reads_to_three_figures():
    """Issue 27, item 9: lr 0.12524567764709546 and weight decay 0.00008006122927666534 on the Train page."""
    from core.design.config import TrainConfig
    from core.units import significant
    from pages._ui import rounded

    assert significant(0.12524567764709546) == 0.125 and significant(0.00008006122927666534) == 0.0000801
    assert significant(0.0) == 0.0 and significant(1800.0) == 1800.0
    drawn = rounded(TrainConfig(lr=0.12524567764709546, weight_decay=0.00008006122927666534, epochs=7))
    assert (drawn.lr, drawn.weight_decay, drawn.epochs) == (0.125, 0.0000801, 7)
