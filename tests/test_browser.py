"""The app in a real browser: every page renders without an exception, and the Design page reacts.

Starts `streamlit run app.py` on a free port and drives Debian's Chromium through Playwright.
Each page's screenshot lands in test-output/screenshots/<page>.png (Classify and Evaluate are shot
again once they show results, over their first shot). To cover a new page, add it to PAGES; to
exercise one, write a test that takes `page` and calls `open_app_page`.
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlencode
from pathlib import Path

import pytest

from core.design.spec import ArchSpec

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-output" / "screenshots"
PAGES = {"design": "", "train": "train", "runs": "runs", "search": "search", "evaluate": "evaluate", "classify": "classify"}  # name: url path ("" = default)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXCEPTION = '[data-testid="stException"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; `make browser` installs it"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def app_url(trained_runs):
    """The app served from this checkout, its runs folder holding the trained `small` run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | {"RESNET_STUDIO_RUNS": str(trained_runs)})
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(base_url=app_url, viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def wait_until_settled(page) -> None:
    """Until the script has run and every element has drawn (widgets load their code lazily)."""
    from playwright.sync_api import expect

    page.locator('[data-testid="stApp"][data-test-connection-state="CONNECTED"]').wait_for()
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
    expect(page.locator('[data-testid^="stSkeleton"]')).to_have_count(0, timeout=60_000)  # a busy machine draws slowly


def open_app_page(page, path: str) -> None:
    page.goto(f"/{path}")
    wait_until_settled(page)
    page.locator("h1").first.wait_for()


def assert_no_exception(page) -> None:
    shown = page.locator(EXCEPTION)
    assert shown.count() == 0, f"the page shows an exception:\n{shown.first.inner_text()}"


def metric_value(page, label: str):
    label = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label).get_by_test_id("stMetricValue")


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls an inner element, so grow the viewport to its height first."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    wait_until_settled(page)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")
    page.set_viewport_size(viewport)


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
