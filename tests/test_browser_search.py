"""The Search page in a real browser: define a tiny space with the sliders, launch the study, and watch the
table and the chart move as its trial trains and finishes.

The app is served with a runs folder of this test's own, so the study and its runs vanish with it.
"""

import pytest

from core.search.report import study_status
from core.search.study import list_studies, worker_alive
from core.search.worker import request_stop
from conftest import CHART, assert_no_exception, open_app_page, screenshot, serve_app, wait_until_settled
SLOW = 30_000  # ms: this machine may be training something else meanwhile


@pytest.fixture
def search_app(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs))
    with serve_app(runs) as url:
        try:
            yield url
        finally:
            for name in list_studies():  # a study still searching (a failed test) is stopped
                if worker_alive(name):
                    request_stop(name)


def slide_to_lowest(page, key: str) -> None:
    """Both thumbs of a range slider to its lowest value (the upper thumb stops at the lower one)."""
    for thumb in (0, 1):
        handle = page.locator(f".st-key-{key} input[type=range]").nth(thumb)
        handle.focus()
        handle.press("Home")
        wait_until_settled(page)


def type_into(page, key: str, value: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(value)
    box.press("Enter")
    wait_until_settled(page)
    assert box.input_value() == value


def test_a_study_defined_and_launched_in_the_browser_shows_its_trial_live(browser, search_app):
    from playwright.sync_api import expect

    expect.set_options(timeout=SLOW)  # the page's first load imports Optuna: slow on a busy machine
    context = browser.new_context(base_url=search_app, viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(SLOW)
    try:
        open_app_page(page, "search")
        for key in ("search-stages", "search-blocks", "search-width"):
            slide_to_lowest(page, key)  # one stage of one block, 4 channels: a design that trains in seconds
        type_into(page, "search-epochs", "1")
        type_into(page, "search-trials", "1")
        type_into(page, "search-name", "browser")
        screenshot(page, "search-defined")
        page.get_by_role("button", name="Launch the study").click()
        expect(page.get_by_role("combobox", name="Study")).to_have_value("browser", timeout=SLOW)

        expect(page.get_by_test_id("stDataFrame")).to_be_visible(timeout=2 * SLOW)  # the trial, queued or running
        finished = page.get_by_test_id("stMetric").filter(has_text="Finished").get_by_test_id("stMetricValue")
        expect(finished).to_have_text("0")
        screenshot(page, "search-running")
        expect(finished).to_have_text("1", timeout=300_000)  # the refresh brings the end in
        expect(page.locator(CHART).first).to_be_visible(timeout=SLOW)  # accuracy against parameters
        expect(page.get_by_role("button", name="Open in Design")).to_be_visible()
        assert_no_exception(page)
        screenshot(page, "search-finished")
        study = study_status("browser")
        assert study["space"]["ranges"]["stages"] == 1 and study["space"]["ranges"]["width"] == 4
        assert study["states"] == {"finished": 1}
    finally:
        context.close()
