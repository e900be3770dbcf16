"""Classify in a real browser on the shipped runs: odd images (noise, one pixel) are said, in words, not to look like
what the network was trained on, while real test images pass. Its screenshot lands in
test-output/screenshots/classify-odd-images.png."""
import io
import shutil

import numpy as np
from PIL import Image

from tests.helpers import ROOT, assert_no_exception, open_app_page, screenshot, serve_app, wait_until_settled
from core.deploy.predict import sample_files


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_says_when_an_image_does_not_look_like_its_training_images(browser, tmp_path):
    from playwright.sync_api import expect

    runs_dir = tmp_path / "runs"
    for name in ("example", "laptop"):
        shutil.copytree(ROOT / "runs" / name, runs_dir / name)
    rng = np.random.default_rng(0)
    odd = [("noise32.png", png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))),
           ("one-pixel.png", png(Image.new("RGB", (1, 1), (200, 30, 40))))]
    real = sample_files()[:2]  # a plane and a car of the test split
    with serve_app(runs_dir) as url:
        context = browser.new_context(base_url=url, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        try:
            open_app_page(page, "classify")
            page.locator(".st-key-classify_upload input[type=file]").set_input_files(
                files=[{"name": name, "mimeType": "image/png", "buffer": data} for name, data in odd + real])
            expect(page.locator("h4").filter(has_text="%")).to_have_count(4, timeout=120_000)
            wait_until_settled(page)
            assert_no_exception(page)
            alerts = page.locator('[data-testid="stAlert"]')
            expect(alerts.filter(has_text="This image does not look like what the network was trained on")) \
                .to_have_count(2)
            expect(alerts.filter(has_text="like noise")).to_have_count(1)
            expect(alerts.filter(has_text="nearly flat")).to_have_count(1)
            screenshot(page, "classify-odd-images")

            many = sample_files(2)[:14]  # added to the four: the uploader listed two rows of files and hid the rest
            page.locator(".st-key-classify_upload input[type=file]").set_input_files(
                files=[{"name": name, "mimeType": "image/png", "buffer": data} for name, data in many])
            expect(page.locator("h4").filter(has_text="%")).to_have_count(18, timeout=120_000)
            wait_until_settled(page)
            chips = page.locator('.st-key-classify_upload [data-testid="stFileChips"]')
            height, shown = chips.evaluate("e => [e.scrollHeight, e.clientHeight]")
            assert height <= shown + 1, (height, shown)  # every file's chip in sight, none scrolled away
        finally:
            context.close()
