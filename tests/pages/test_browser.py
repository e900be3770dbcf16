"""The app in a real browser: every page renders without an exception, and the Design page reacts.

Starts `streamlit run app.py` on a free port and drives Debian's Chromium through Playwright.
Each page's screenshot lands in test-output/screenshots/<page>.png (Classify and Evaluate are shot
again once they show results, over their first shot). To cover a new page, add it to PAGES; to
exercise one, write a test that takes `page` and calls `open_app_page`.
"""
import os
import re
import shutil
import signal
from urllib.parse import urlencode

import psutil
import pytest

from tests.helpers import assert_no_exception, open_app_page, screenshot, wait_for, wait_until_settled
from core.deploy.jobs import read_job
from core.deploy.onnx_model import exported_file
from core.design.spec import ArchSpec
from core.processes import process_alive
from core.runs.run import Run

PAGES = {"design": "", "train": "train", "runs": "runs", "search": "search", "evaluate": "evaluate",
         "classify": "classify"}  # name: url path ("" = default)


def metric_value(page, label: str):
    label = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label).get_by_test_id("stMetricValue")


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_exception(page, name):
    open_app_page(page, PAGES[name])
    assert_no_exception(page)
    screenshot(page, name)


def test_typing_an_exact_channel_width_changes_the_parameter_count(page):
    from playwright.sync_api import expect

    open_app_page(page, PAGES["design"])
    total = metric_value(page, "Parameters")
    before = total.inner_text()
    channels = page.locator(".st-key-design-stages-3-channels-exact input")
    channels.fill("252")
    channels.press("Enter")
    expect(total).not_to_have_text(before, timeout=60_000)
    assert int(total.inner_text().replace(",", "")) > int(before.replace(",", ""))
    wait_until_settled(page)
    assert_no_exception(page)


def test_dragging_a_blocks_slider_changes_the_parameter_count(page):
    from playwright.sync_api import expect

    from core.design.budget import count
    from core.design.presets import preset_spec

    open_app_page(page, PAGES["design"])
    total = metric_value(page, "Parameters")
    before = total.inner_text()
    value = page.locator(".st-key-design-stages-3-blocks input[type=range]")  # hidden; its thumb holds it
    value.locator("xpath=../..").scroll_into_view_if_needed()  # the mouse acts within the window only
    box = value.locator("xpath=../..").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2, steps=8)  # to the right
    page.mouse.up()
    expect(total).not_to_have_text(before, timeout=60_000)
    wait_until_settled(page)
    blocks = int(value.input_value())
    design = preset_spec("resnet26-seed").to_dict()
    design["stages"][3]["blocks"] = blocks
    assert blocks > 3 and total.inner_text() == f"{count(ArchSpec.from_dict(design)).params:,}"
    gauge = page.get_by_test_id("stProgress").first
    expect(gauge).to_contain_text("over budget", timeout=60_000)  # 4 blocks of 200 channels in stage 3: past 5M, in red
    assert_no_exception(page)


def test_a_link_opens_its_design(page):
    from core.design.budget import count
    from core.design.link import from_query

    query = {"stem": ["32"], "stage": ["2x32s1", "2x64s2"], "pool": ["8"]}
    open_app_page(page, "?" + urlencode(query, doseq=True))
    assert_no_exception(page)
    assert metric_value(page, "Parameters").inner_text() == f"{count(from_query(query)).params:,}"


def test_a_bad_upload_shows_an_error_not_an_exception(page):
    from playwright.sync_api import expect

    open_app_page(page, PAGES["design"])
    page.locator(".st-key-design_upload input[type=file]").set_input_files(
        files=[{"name": "broken.json", "mimeType": "application/json", "buffer": b'{"stages": ['}])
    expect(page.get_by_text("Could not load broken.json: not valid JSON")).to_be_visible()
    wait_until_settled(page)
    assert_no_exception(page)


def test_an_uploaded_image_gets_a_prediction(page):
    import io

    from PIL import Image
    from playwright.sync_api import expect

    from core.data.datasets import CLASSES, load_dataset

    picture = Image.fromarray(load_dataset("builtin").test.images[0].permute(1, 2, 0).numpy()).resize((160, 160))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    open_app_page(page, PAGES["classify"])
    page.locator(".st-key-classify_upload input[type=file]").set_input_files(
        files=[{"name": "plane.png", "mimeType": "image/png", "buffer": png.getvalue()}])
    heading = page.locator("h4").filter(has_text="%")
    expect(heading).to_have_count(1)
    assert heading.inner_text().split(" · ")[0] in CLASSES
    wait_until_settled(page)
    assert_no_exception(page)
    screenshot(page, "classify")


def test_evaluating_shows_the_confusion_matrix_and_mistakes(page):
    from playwright.sync_api import expect

    open_app_page(page, PAGES["evaluate"])
    page.get_by_role("button", name="Evaluate", exact=True).click()
    expect(metric_value(page, "Accuracy")).to_have_text(re.compile(r"^\d+\.\d\d%$"))
    expect(page.get_by_text("Most confident mistakes")).to_be_visible()
    wait_until_settled(page)
    assert_no_exception(page)
    screenshot(page, "evaluate")


def test_an_export_clicked_at_once_after_picking_a_run_and_typing_a_drop_is_that_runs_with_that_drop(page,
                                                                                                  trained_runs):
    """A person picks a run, types the allowed drop and clicks Export, faster than the page redraws. The drop's
    box hands its value over only with the click, and the page still shows the run picked before: the export
    once used the drop and the run the page had last drawn with."""
    from playwright.sync_api import expect

    run = Run(shutil.copytree(trained_runs / "small", trained_runs / "drop"))  # exports of its own
    model = exported_file(run, "int8")
    try:
        open_app_page(page, PAGES["runs"])
        export = page.get_by_role("button", name="Export ONNX int8")
        expect(export).to_be_visible()  # the page has drawn down to the export cards: nothing redraws the list
        choice = page.get_by_role("combobox", name="Run", exact=True)
        choice.focus()
        choice.press("ArrowDown")  # opens the list (a click on the box sometimes did not)
        page.get_by_role("option").filter(has_text=re.compile(r"^drop · ")).click()
        page.locator(".st-key-export_max_drop input").fill("7.5")  # no waiting for the redraw: straight on
        export.click()
        job = wait_for(lambda: (read_job(model) or {}).get("pid") and read_job(model), timeout=30,
                       what="the chosen run's int8 export to start")
        assert "--max-drop 7.5 " in " ".join(psutil.Process(job["pid"]).cmdline()) + " "
        assert not (trained_runs / "small" / "exports").exists()  # the run shown before the pick
        expect(page.get_by_test_id("stProgress")).to_be_visible()  # the page follows the export
        assert_no_exception(page)
    finally:
        job = read_job(model)
        if job and job.get("pid") and process_alive(job["pid"], job.get("pid_start")):  # what it measures is not
            os.killpg(job["pid"], signal.SIGKILL)                                      # this test's: stop it
            wait_for(lambda: not process_alive(job["pid"], job.get("pid_start")), what="the export's end")
        shutil.rmtree(run.dir)
