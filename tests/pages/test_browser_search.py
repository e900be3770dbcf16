"""The Search page in a real browser: define a tiny space with the sliders, launch the study, and watch the
table and the chart move as its trial trains and finishes.

The app is served with a runs folder of this test's own, so the study and its runs vanish with it.
"""

import pytest

from core.search.report import study_status
from core.search.study import Study, list_studies, worker_alive
from core.search.worker import request_stop
from tests.helpers import CHART, assert_no_exception, open_app_page, screenshot, serve_app, wait_until_settled
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
                    request_stop(Study(name))


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
        page.locator(".st-key-search-name input").fill("browser")  # and straight to Launch, as a person does:
        page.get_by_role("button", name="Launch the study").click()  # the name arrives with the click
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
        study = study_status(Study("browser"))
        assert study["space"]["ranges"]["stages"] == 1 and study["space"]["ranges"]["width"] == 4
        assert study["states"] == {"finished": 1}
    finally:
        context.close()


OPTION_CONTROLS = ("objectives", "pruner", "device", "kernel_size", "se_ratio", "batch_size", "augment", "ema_decay")


@pytest.mark.parametrize("width", [1100, 1400])
def test_every_option_of_a_new_study_shows_in_full(browser, search_app, width):
    """Issue 19: at 1400 px "Accuracy and MACs" was cut off, at 1100 px all of it but its "A", and the
    augmentation pills did not wrap ("crop+flip+trivialaugment" could not be seen). Each option of every
    control now lies whole within its column, and nothing scrolls sideways out of sight."""
    from playwright.sync_api import expect

    expect.set_options(timeout=SLOW)
    context = browser.new_context(base_url=search_app, viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(SLOW)
    try:
        open_app_page(page, "search")
        for key in OPTION_CONTROLS:
            control = page.locator(f".st-key-search-{key}")
            expect(control).to_be_visible()
            hidden = control.evaluate("e => [...e.querySelectorAll('*')].filter(n => n.scrollWidth > n.clientWidth + 1)"
                                      ".map(n => n.innerText)")
            assert hidden == [], f"{key} at {width} px: options out of sight in {hidden}"
            column = control.bounding_box()
            options = control.locator("button").all()
            assert options, key
            for option in options:
                box = option.bounding_box()
                assert column["x"] <= box["x"] and box["x"] + box["width"] <= column["x"] + column["width"] + 1, \
                    f"{key} at {width} px: {option.inner_text()!r} sticks out of its column"
        expect(page.locator("button", has_text="Accuracy and MACs")).to_be_visible()
        expect(page.locator("button", has_text="crop+flip+trivialaugment")).to_be_visible()
        assert_no_exception(page)
        screenshot(page, f"search-new-study-{width}")
    finally:
        context.close()
