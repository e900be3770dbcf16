"""Train and Runs in a real browser: a design launched from the browser is followed live from its first steps to
its end, and Runs shows it; the queue line follows the machine; a reload or a new tab keeps the design and its
settings. (That both pages open cleanly is test_browser.py's test_page_renders_without_exception.)

The server's runs folder is the session's shared `trained_runs`: the run launched here has a name of its own
and is deleted at the end, so the other tests see that folder as it was.
"""
import os
import re
import signal
import time
from urllib.parse import urlencode

import pytest

from tests.helpers import (CHART, QUICK_ARCH, assert_no_exception, holder, open_app_page, screenshot, serve_app,
                      wait_until_settled)
from core.design.budget import count
from core.design.link import to_query
from core.design.spec import ArchSpec
from core.runs.run import Run, delete, stop

TINY = ArchSpec.from_dict(QUICK_ARCH)  # trains an epoch in seconds
# an epoch of about 30 s on one core: long enough to see, and photograph, the first epoch step by step
SLOWER = ArchSpec.from_dict({"stages": [{"blocks": 1, "channels": 48}], "pool_size": 32})
SLOW = 30_000  # ms: this machine may be training something else meanwhile


def set_number(page, key: str, value: int) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_until_settled(page)


def launch_button(page, name: str):
    """The Launch button, enabled once the run's name is typed in."""
    from playwright.sync_api import expect

    run_name = page.get_by_role("textbox", name="Run name")
    run_name.fill(name)
    run_name.press("Enter")
    wait_until_settled(page)
    launch = page.get_by_role("button", name="Launch")
    expect(launch).to_be_enabled(timeout=SLOW)
    return launch


def stop_and_delete(run: Run) -> None:
    """The run a test launched is gone at its end, so the other tests see the session's runs folder as it was."""
    if run.exists():
        stop(run)
        deadline = time.monotonic() + 60
        while run.status()["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        delete(run)


@pytest.mark.long
def test_a_design_launched_from_the_browser_is_followed_live_from_its_first_steps_to_its_end(page, trained_runs):
    from playwright.sync_api import expect

    name = f"browser-{time.strftime('%H%M%S')}"
    run = Run.named(name, trained_runs)
    open_app_page(page, "?" + urlencode(to_query(SLOWER), doseq=True))  # the design, by its link
    page.get_by_role("button", name="Train this design").click()
    expect(page.locator("h1")).to_have_text("Train", timeout=2 * SLOW)  # its first visit imports torch
    set_number(page, "train-epochs", 1)
    page.get_by_role("radio", name="Built-in slice").click()
    launch = launch_button(page, name)
    page.evaluate("document.querySelector('h1').scrollIntoView()")  # at the top, where the settings are
    launch.dispatch_event("click")  # a click that does not scroll the page itself
    try:
        # the page goes down to the run it follows, thousands of pixels below
        expect(page.get_by_role("button", name="Stop")).to_be_in_viewport(timeout=SLOW)
        progress = page.get_by_test_id("stProgress")
        # within the first epoch: the step, and the time left from the first steps
        in_epoch_1 = re.compile(r"Epoch 0\.\d+ of 1 · step \d+ of 39 · .* · about .+ left")
        expect(progress).to_contain_text(in_epoch_1, timeout=240_000)
        expect(page.locator(CHART).first).to_be_visible(timeout=SLOW)  # the loss within the epoch
        trainer = run.status()["pid"]
        os.kill(trainer, signal.SIGSTOP)  # held within epoch 1 for the pictures, however fast this machine is
        try:
            for width in (1400, 1100):  # the two window sizes, during epoch 1
                page.set_viewport_size({"width": width, "height": 1000})
                wait_until_settled(page)
                expect(progress).to_contain_text(in_epoch_1, timeout=1)  # the picture shows the first epoch
                screenshot(page, f"train-epoch1-{width}")
        finally:
            os.kill(trainer, signal.SIGCONT)
        assert_no_exception(page)
        expect(page.get_by_role("button", name="Train longer")).to_be_visible(timeout=300_000)  # finished
        expect(progress).to_contain_text("Epoch 1 of 1", timeout=SLOW)
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
        stop_and_delete(run)


def test_a_time_budget_run_reads_its_time_honestly_while_it_trains(page, trained_runs):
    """Issue 27, item 10, live: a half-minute budget, its progress in its time (never all of it before its end),
    the step only within an epoch; photographed during the run at 1100 px."""
    from playwright.sync_api import expect

    name = f"budget-{time.strftime('%H%M%S')}"
    run = Run.named(name, trained_runs)
    page.set_viewport_size({"width": 1100, "height": 1000})
    open_app_page(page, "train?" + urlencode(to_query(SLOWER), doseq=True))
    page.get_by_role("radio", name="Built-in slice").click()
    wait_until_settled(page)
    page.get_by_role("radio", name="A time budget").click()
    wait_until_settled(page)
    box = page.locator(".st-key-train_minutes input")
    box.fill("0.5")
    box.press("Enter")
    wait_until_settled(page)
    launch = launch_button(page, name)
    launch.dispatch_event("click")
    try:
        progress = page.get_by_test_id("stProgress")
        under_way = re.compile(r"Epoch 0\.\d+ · [1-9][\d.]* s of 30 s trained · step \d+ of 39")
        expect(progress).to_contain_text(under_way, timeout=240_000)
        text = progress.inner_text()
        assert "30 s of 30 s trained · about" not in text and "step 0 of" not in text, text
        trainer = run.status()["pid"]
        os.kill(trainer, signal.SIGSTOP)  # held mid-budget for the picture
        try:
            wait_until_settled(page)
            screenshot(page, "train-time-budget-1100")
        finally:
            os.kill(trainer, signal.SIGCONT)
        assert_no_exception(page)
    finally:
        stop_and_delete(run)


def test_a_reload_and_a_new_tab_keep_the_design_and_its_settings(page):
    from playwright.sync_api import expect

    open_app_page(page, "?" + urlencode(to_query(TINY), doseq=True))
    page.get_by_role("button", name="Train this design").click()
    expect(page.locator("h1")).to_have_text("Train", timeout=2 * SLOW)
    set_number(page, "train-epochs", 7)
    params = f"{count(TINY).params:,}"
    for tab in (page, page.context.new_page()):  # the same tab reloaded, then a new tab with no link
        if tab is page:
            page.reload()
            wait_until_settled(page)
        else:
            tab.set_default_timeout(SLOW)
            open_app_page(tab, "train")
        expect(tab.locator("h1")).to_have_text("Train", timeout=2 * SLOW)
        expect(tab.get_by_test_id("stMetric").filter(has_text="Parameters")).to_contain_text(params)
        expect(tab.locator(".st-key-train-epochs input")).to_have_value("7")
        expect(tab.get_by_test_id("stCaptionContainer").filter(has_text="Launch trains")).to_contain_text(
            f"({params} parameters) for 7 epochs")
        assert "stage=1x8s2" in tab.url  # the address bar links to the design: the next reload finds it too
        assert_no_exception(tab)
    expect(tab.get_by_text("This is your last design, restored as you left it")).to_be_visible()


def test_the_queue_line_follows_the_machine_without_a_reload(browser, tmp_path):
    from playwright.sync_api import expect

    with serve_app(tmp_path / "runs") as url:  # this test's device locks: only its own holder is on the queue
        context = browser.new_context(base_url=url, viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(SLOW)
            open_app_page(page, "train")
            queue_line = page.get_by_test_id("stCaptionContainer").filter(has_text="Queue: ")
            expect(queue_line).to_contain_text("every device is free")
            other = holder("pgf-000", "")  # a run of another checkout takes the CPU
            try:
                assert other.stdout.readline() == "holding: cpu\n"
                expect(queue_line).to_contain_text("CPU is busy with pgf-000", timeout=20_000)
            finally:
                other.stdin.close()
                other.wait(timeout=30)
            expect(queue_line).to_contain_text("every device is free", timeout=20_000)
            assert_no_exception(page)
        finally:
            context.close()
