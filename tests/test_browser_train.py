"""Train and Runs in a real browser: a design launched from the browser trains live to its end, and Runs shows it.
(That both pages open cleanly is test_browser.py's test_page_renders_without_exception.)

The server's runs folder is the session's shared `trained_runs`: the run launched here has a name of its own
and is deleted at the end, so the other tests see that folder as it was.
"""
import re
import time
from urllib.parse import urlencode

from conftest import CHART, QUICK_ARCH, assert_no_exception, open_app_page, screenshot
from core.design.link import to_query
from core.design.spec import ArchSpec
from core.runs.run import Run, delete, stop

TINY = ArchSpec.from_dict(QUICK_ARCH)  # trains an epoch in seconds
SLOW = 30_000  # ms: this machine may be training something else meanwhile


def test_a_design_launched_from_the_browser_trains_live_to_its_end(page, trained_runs):
    from playwright.sync_api import expect

    name = f"browser-{time.strftime('%H%M%S')}"
    run = Run.named(name, trained_runs)
    open_app_page(page, "?" + urlencode(to_query(TINY), doseq=True))  # the design, by its link
    page.get_by_role("button", name="Train this design").click()
    expect(page.locator("h1")).to_have_text("Train", timeout=2 * SLOW)  # its first visit imports torch
    epochs = page.locator(".st-key-train-epochs input")
    epochs.fill("6")  # long enough that the 2 s refresh cannot miss the run in progress
    epochs.press("Enter")
    page.get_by_role("radio", name="Built-in slice").click()
    run_name = page.locator(".st-key-train_run_name input")
    run_name.fill(name)
    run_name.press("Enter")
    launch = page.get_by_role("button", name="Launch")
    expect(launch).to_be_enabled(timeout=SLOW)
    launch.click()
    try:
        # the first point within the epoch: the bar moves and the loss is drawn
        expect(page.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch (0\.[1-9]|[1-5]\.\d) of 6"),
                                                                  timeout=120_000)
        expect(page.locator(CHART).first).to_be_visible(timeout=SLOW)
        screenshot(page, "train-running")
        assert_no_exception(page)
        expect(page.get_by_role("button", name="Train longer")).to_be_visible(timeout=180_000)  # finished
        expect(page.get_by_test_id("stProgress")).to_contain_text("Epoch 6.0 of 6", timeout=SLOW)
        expect(page.locator(CHART)).to_have_count(3, timeout=SLOW)
        assert run.status()["state"] == "finished"
        assert_no_exception(page)
        screenshot(page, "train")

        open_app_page(page, "runs")
        expect(page.locator(".st-key-runs_compare")).to_contain_text(name, timeout=SLOW)  # the newest runs, overlaid
        expect(page.locator(CHART)).to_have_count(5, timeout=SLOW)  # 2 overlays, scatter, confusion, classes
        assert_no_exception(page)
        screenshot(page, "runs")
    finally:
        if run.exists():
            stop(run)
            deadline = time.monotonic() + 60
            while run.status()["state"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.5)
            delete(run)
