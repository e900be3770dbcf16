"""In Chromium: the course's test set uploaded on Evaluate's "Predict a test set" shows its first images with their
predicted class, and the CSV downloaded is the one core.deploy.submit makes for it."""
import pickle

import numpy as np

from tests.helpers import assert_no_exception, open_app_page, screenshot, wait_until_settled
from core.data.datasets import load_dataset
from core.data.testsets import read_unlabelled_bytes
from core.deploy.predict import Classifier
from core.deploy.submit import predict_test_set


def test_upload_the_course_pickle_see_the_preview_download_the_csv(page, trained, tmp_path):
    from playwright.sync_api import expect

    images = load_dataset("builtin").test.images.numpy()
    order = np.random.default_rng(7).permutation(len(images))
    course = pickle.dumps({b"data": images[order].transpose(0, 2, 3, 1), b"ids": list(order + 1)})  # Spring 2025
    expected = predict_test_set(Classifier.load(trained, "best"), read_unlabelled_bytes("test.pkl", course))
    open_app_page(page, "evaluate")
    page.get_by_role("tab", name="Predict a test set").click()
    page.locator(".st-key-evaluate_submit_upload input[type=file]").set_input_files(
        files=[{"name": "cifar_test_nolabel.pkl", "mimeType": "application/octet-stream", "buffer": course}])
    first = expected.rows()[0]
    expect(page.get_by_text(f"{first['ID']}: {first['class']} · {first['probability']:.0%}", exact=True)).to_be_visible(
        timeout=120_000)
    expect(page.get_by_test_id("stImageCaption")).to_have_count(24)
    wait_until_settled(page)
    assert_no_exception(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download submission.csv").click()
    saved = tmp_path / "submission.csv"
    download.value.save_as(saved)
    assert saved.read_bytes() == expected.csv()
    assert saved.read_text().splitlines()[:2] == ["ID,Labels", f"{first['ID']},{first['Labels']}"]
    screenshot(page, "evaluate-submit")
