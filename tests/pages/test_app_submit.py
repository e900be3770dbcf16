"""Evaluate and Classify test each run with its own test-time augmentation unless told otherwise, and a result made
with other settings is marked; Evaluate's "Predict a test set" reads the course pickle, previews it and offers the
CSV. AppTest, real uploads, the shipped runs (runs/laptop tested with flip TTA, runs/example without)."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.data.datasets import CLASSES, load_dataset
from core.data.testsets import read_unlabelled_bytes
from core.deploy.predict import Classifier, evaluate_run
from core.deploy.submit import predict_test_set
from core.runs.run import Run
from tests.helpers import APP, ROOT, Payload

STALE = "Made with other settings than those above"


@pytest.fixture
def shipped_runs(tmp_path, monkeypatch) -> Path:
    runs = tmp_path / "runs"
    for name in ("laptop", "example"):
        shutil.copytree(ROOT / "runs" / name, runs / name)
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(runs))
    return runs


def open_page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=180).run()
    app.switch_page(f"pages/{name}.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def accuracy(app: AppTest) -> str:
    return next(m.value for m in app.metric if m.label == "Accuracy")


def warnings(app: AppTest) -> list[str]:
    return [w.value for w in app.warning]


def test_evaluate_uses_the_runs_own_tta_and_marks_a_result_made_otherwise(shipped_runs, test_slice):
    app = open_page("evaluate")
    assert app.segmented_control(key="evaluate_tta").value == "own"
    app.segmented_control(key="evaluate_data").set_value("path").run()
    app.text_input(key="evaluate_path").set_value(test_slice).run()
    app.button(key="evaluate").click().run()
    laptop = Classifier.load(Run(shipped_runs / "laptop"), "best")
    own, off = (evaluate_run(laptop, test_slice, 0, flip).accuracy for flip in (True, False))
    assert accuracy(app) == f"{own:.2%}"
    assert any("flip and 1-pixel shifts (6 views): the run's own" in c.value for c in app.caption)
    assert not any(STALE in w for w in warnings(app))
    app.segmented_control(key="evaluate_tta").set_value("none").run()
    assert any(STALE in w for w in warnings(app))  # the figure on screen is no longer what the controls say
    app.button(key="evaluate").click().run()
    assert accuracy(app) == f"{off:.2%}" and not any(STALE in w for w in warnings(app))
    assert any("none: asked for; the run's own is flip and 1-pixel shifts (6 views)" in c.value for c in app.caption)


def test_classify_starts_at_each_runs_own_tta(shipped_runs):
    app = open_page("classify")
    assert app.toggle(key="classify_tta").value is True  # runs/laptop, the best run, was tested with 6 views
    assert any("flip and 1-pixel shifts (6 views): the run's own" in c.value for c in app.caption)
    app.selectbox(key="run_choice:widget").set_value("example").run()
    assert app.toggle(key="classify_tta").value is False
    assert any("none: the run's own" in c.value for c in app.caption)


def course_pickle(data: str) -> tuple[bytes, np.ndarray]:
    """Spring 2024's layout, (N, 3072) CIFAR rows, of DATA's test split in a shuffled order."""
    images = load_dataset(data).test.images.numpy()
    order = np.random.default_rng(5).permutation(len(images))
    return pickle.dumps({b"data": images[order].reshape(len(order), -1), b"ids": order + 1}), order


def test_predict_a_test_set_previews_it_and_offers_the_csv(shipped_runs, test_slice):
    app = open_page("evaluate")
    data, order = course_pickle(test_slice)
    app.file_uploader(key="evaluate_submit_upload").set_value(
        [("cifar_test_nolabels.pkl", data, "application/octet-stream")]).run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    expected = predict_test_set(Classifier.load(Run(shipped_runs / "laptop"), "best"),
                                read_unlabelled_bytes("cifar_test_nolabels.pkl", data))
    rows = expected.rows()
    captions = [c for image in app.image for c in image.captions]
    assert captions == [f"{r['ID']}: {r['class']} · {r['probability']:.0%}" for r in rows[:24]]
    assert [b.label for b in app.download_button] == ["Download submission.csv"]
    assert any(f"sha256 {expected.test_set.sha256[:16]}" in c.value and "(N, 3072) CIFAR rows" in c.value
               and "the run's own" in c.value for c in app.caption)
    histogram = app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")
    assert histogram  # the class histogram
    labels = load_dataset(test_slice).test.labels.numpy()[order]
    assert sum(r["Labels"] == label for r, label in zip(rows, labels)) / len(rows) == pytest.approx(
        evaluate_run(Classifier.load(Run(shipped_runs / "laptop"), "best"), test_slice, 0).accuracy, abs=1e-6)
    assert list(expected.histogram()) == list(CLASSES)


def test_a_hostile_upload_is_refused_and_never_runs(shipped_runs, tmp_path):
    marker = tmp_path / "payload-ran"
    app = open_page("evaluate")
    app.file_uploader(key="evaluate_submit_upload").set_value(
        [("cifar_test_nolabel.pkl", pickle.dumps({b"data": Payload(marker)}), "application/octet-stream")]).run()
    assert not app.exception
    assert any("it asks to load posix.system" in e.value for e in app.error)
    assert not marker.exists() and not app.download_button
