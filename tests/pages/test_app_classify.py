"""The Classify and Evaluate pages, run headless through Streamlit's AppTest with real uploads, against a
runs folder holding a run the engine really trained.

Every expected prediction and accuracy comes from core.deploy.predict on the same bytes and checkpoint, so the
pages are held to what the CLI would say.
"""
import csv
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.data.datasets import CLASSES, load_dataset
from core.deploy.predict import Classifier, classify, evaluate_run, predictions_csv, sample_files
from core.runs.run import Run
from tests.helpers import APP, assert_clean


# ---- helpers ----------------------------------------------------------------------------------

def open_page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120).run()
    app.switch_page(f"pages/{name}.py").run()
    assert_clean(app)
    return app


def use_runs(monkeypatch, folder: Path) -> None:
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(folder))


def copy_run(trained: Run, runs_dir: Path, name: str, **status) -> Run:
    """A copy of the trained run under `name`, its status changed by `status`."""
    run = Run(shutil.copytree(trained.dir, runs_dir / name))
    run.update_status(**status)
    return run


def picture(index: int, size: int = 96) -> Image.Image:
    """A CIFAR-10 test image, enlarged as a photo would be."""
    image = load_dataset("builtin").test.images[index]
    return Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BICUBIC)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def awkward_files() -> list[tuple[str, bytes]]:
    """A plain PNG, a text file called .png, and the colour modes and encodings people's images come in."""
    sixteen_bit = np.asarray(picture(2).convert("L"), dtype=np.uint16) * 257  # Pillow reads it as I;16
    translucent = picture(3).convert("RGBA")
    translucent.putalpha(Image.linear_gradient("L").resize(translucent.size))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; shown rotated 90° clockwise
    return [("plane.png", encoded(picture(0), "PNG")),
            ("notes.png", b"a shopping list, not an image"),
            ("print.jpg", encoded(picture(1).convert("CMYK"), "JPEG")),
            ("scan-16bit.png", encoded(Image.fromarray(sixteen_bit), "PNG")),
            ("sticker.png", encoded(translucent, "PNG")),
            ("phone.jpg", encoded(picture(4, 128).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif))]


def upload(app: AppTest, key: str, files: list[tuple[str, bytes]], mime: str = "image/png") -> AppTest:
    return app.file_uploader(key=key).set_value([(name, data, mime) for name, data in files]).run()


def headings(app: AppTest) -> list[str]:
    return [m.value for m in app.markdown if m.value.startswith("#### ")]


def expected_heading(prediction) -> str:
    first = prediction.top(1)[0]
    return f"#### {first['class']} · {first['probability']:.0%}"


def metric(app: AppTest, label: str):
    return next(m for m in app.metric if m.label == label)


def charts(app: AppTest) -> list:
    return app.get("vega_lite_chart")


def class_folders_zip(folder_of) -> bytes:
    """40 enlarged test images in <class>/ folders, the folder named by folder_of(class)."""
    test = load_dataset("builtin").test
    classes = load_dataset("builtin").classes
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(0, 1000, 25):
            name = classes[int(test.labels[i])]
            archive.writestr(f"{folder_of(name)}/{i}.png", encoded(picture(i), "PNG"))
    return buffer.getvalue()


# ---- empty states -----------------------------------------------------------------------------

@pytest.mark.parametrize("page", ["classify", "evaluate"])
def test_without_runs_the_page_says_what_to_do_and_offers_the_way(page, tmp_path, monkeypatch):
    use_runs(monkeypatch, tmp_path / "runs")
    app = open_page(page)
    assert app.info and app.info[0].value.startswith("No runs yet.")
    assert {"Design a network", "Train"} <= {b.label for b in app.button}
    next(b for b in app.button if b.label == "Design a network").click().run()
    assert_clean(app)
    assert app.title[0].value == "Design"


def test_a_newer_run_without_checkpoint_is_not_the_default_and_says_when_it_will_have_one(trained, tmp_path,
                                                                                          monkeypatch):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "finished")
    fresh = copy_run(trained, runs_dir, "fresh", state="running", pid=os.getpid(), pid_start=None)
    shutil.rmtree(fresh.checkpoints)
    os.utime(fresh.status_path)  # the newest run, but without a checkpoint
    use_runs(monkeypatch, runs_dir)
    app = open_page("classify")
    assert app.selectbox(key="run_choice:widget").value == "finished"
    assert not any("appears after the first epoch" in i.value for i in app.info)

    app.selectbox(key="run_choice:widget").set_value("fresh").run()
    assert_clean(app)
    assert any("no checkpoint yet: it appears after the first epoch" in i.value for i in app.info)
    assert not headings(app)


def test_a_broken_checkpoint_is_a_message_not_a_traceback(trained, tmp_path, monkeypatch):
    broken = copy_run(trained, tmp_path / "runs", "broken")
    (broken.checkpoints / "best.safetensors").write_bytes(b"not safetensors at all")
    use_runs(monkeypatch, tmp_path / "runs")
    app = open_page("classify")
    assert_clean(app)
    assert any("can't be loaded" in e.value and "damaged" in e.value for e in app.error)
    app.segmented_control(key="classify_tag").set_value("last").run()
    assert_clean(app)
    assert not app.error  # the other checkpoint is intact


# ---- Classify ---------------------------------------------------------------------------------

def test_every_kind_of_image_is_classified_and_a_bad_file_gets_its_own_error(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    files = awkward_files()
    expected = classify(Classifier.load(trained, "best"), files)
    app = upload(open_page("classify"), "classify_upload", files)
    assert_clean(app)

    assert [e.value for e in app.error] == [p.error for p in expected if not p.ok]
    assert "notes.png" in app.error[0].value and "not an image" in app.error[0].value
    good = [p for p in expected if p.ok]
    assert len(good) == 5
    assert headings(app) == [expected_heading(p) for p in good]
    captions = [c.value for c in app.caption]
    assert all(any(c.startswith(f"{p.file} · next: ") for c in captions) for p in good)
    assert len(app.image) == 3 * len(good)  # image, network input and Grad-CAM for each
    assert len(charts(app)) == len(good)
    assert not app.dataframe  # six files or fewer: no table


def test_flip_test_time_augmentation_changes_what_is_computed(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    files = [(f"image-{i}.png", encoded(picture(i * 97), "PNG")) for i in range(4)]
    app = upload(open_page("classify"), "classify_upload", files)
    app.toggle(key="classify_tta").set_value(True).run()
    assert_clean(app)
    expected = classify(Classifier.load(trained, "best"), files, tta_flip=True)
    assert headings(app) == [expected_heading(p) for p in expected]


def test_many_images_get_a_table_and_a_csv_download(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    files = [(f"image-{i}.png", encoded(picture(i * 101), "PNG")) for i in range(7)] + [("empty.png", b"")]
    app = upload(open_page("classify"), "classify_upload", files)
    assert_clean(app)
    expected = classify(Classifier.load(trained, "best"), files)
    table = app.dataframe[0].value
    assert list(table["File"]) == [name for name, _ in files]
    assert list(table["Top class"][:7]) == [p.top(1)[0]["class"] for p in expected[:7]]
    assert list(table["Probability"][:7]) == pytest.approx([100 * p.top(1)[0]["probability"] for p in expected[:7]])
    assert "empty.png: the file is empty" in table["Error"].iloc[7]
    assert [b.label for b in app.download_button] == ["Download all predictions as CSV"]


def test_the_sample_button_classifies_one_test_image_per_class(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    app = open_page("classify")
    next(b for b in app.button if b.label == "Try ten test images").click().run()
    assert_clean(app)
    expected = classify(Classifier.load(trained, "best"), sample_files())
    assert headings(app) == [expected_heading(p) for p in expected]
    assert len(app.dataframe[0].value) == 10


def test_a_very_long_image_says_only_its_central_square_was_seen(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    strip = Image.new("RGB", (20000, 10), (30, 90, 200))
    files = [("strip.png", encoded(strip, "PNG")), ("wide.png", encoded(picture(5).resize((96, 40)), "PNG"))]
    app = upload(open_page("classify"), "classify_upload", files)
    assert_clean(app)
    assert [w.value for w in app.warning if "look like" not in w.value] == [  # the flat strip is odd too: it says so
        "Only the central 10×10 square of this 20,000×10 image was seen: the network takes a square. Crop the part "
        "that matters to a square, or read this answer as about that square alone."]  # 96×40 is within 3:1: no word


def test_the_default_run_is_the_best_one_and_says_so(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "good")
    weak = copy_run(trained, runs_dir, "weak")  # newer, finished, but a poor accuracy: a 1-epoch run at chance
    weak.metrics_path.write_text(json.dumps({"kind": "epoch", "epoch": 1, "step": 39, "train_loss": 2.2,
                                             "train_acc": 0.15, "eval_split": "test", "eval_loss": 2.1,
                                             "eval_acc": 0.1, "lr": 0.1, "images_per_s": 100.0,
                                             "elapsed": 30.0}) + "\n")
    os.utime(weak.status_path)
    use_runs(monkeypatch, runs_dir)
    for page in ("classify", "evaluate"):
        app = open_page(page)
        chosen = app.selectbox(key="run_choice:widget")
        assert chosen.value == "good"
        best = trained.summary()["best_acc"]
        assert best > 0.1 and chosen.options == ["weak · finished · best 10.0%",
                                                 f"good · finished · best {best:.1%} · best run"]


# ---- Evaluate ---------------------------------------------------------------------------------

def test_evaluating_the_builtin_slice_shows_core_evaluate_runs_accuracy(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    app = open_page("evaluate")
    app.button(key="evaluate").click().run()
    assert_clean(app)
    expected = evaluate_run(Classifier.load(trained, "best"), "builtin")
    assert metric(app, "Accuracy").value == f"{expected.accuracy:.2%}"
    assert metric(app, "Images").value == "1,000"
    hardest = min(expected.per_class_accuracy, key=expected.per_class_accuracy.get)
    assert metric(app, "Hardest class").value == hardest
    assert len(charts(app)) == 2  # the confusion matrix and accuracy per class
    mistakes = [m for image in app.image for m in image.captions]
    assert mistakes == [f"{m.true} → {m.predicted} · {m.confidence:.0%}" for m in expected.mistakes]


def test_an_uploaded_zip_is_evaluated_and_a_wrong_class_folder_is_a_clear_error(trained_runs, trained, monkeypatch,
                                                                              tmp_path):
    use_runs(monkeypatch, trained_runs)
    app = open_page("evaluate")
    app.segmented_control(key="evaluate_data").set_value("upload").run()
    assert app.button(key="evaluate").disabled  # nothing uploaded yet

    wrong = class_folders_zip(lambda name: "aeroplane" if name == "airplane" else name)
    upload(app, "evaluate_upload", [("wrong.zip", wrong)], "application/zip")
    app.button(key="evaluate").click().run()
    assert_clean(app)
    assert len(app.error) == 1
    assert "wrong.zip" in app.error[0].value and "unknown class folder(s) aeroplane" in app.error[0].value
    assert not app.metric

    good = class_folders_zip(lambda name: name)
    upload(app, "evaluate_upload", [("mine.zip", good)], "application/zip")
    app.button(key="evaluate").click().run()
    assert_clean(app)
    (tmp_path / "mine.zip").write_bytes(good)
    expected = evaluate_run(Classifier.load(trained, "best"), str(tmp_path / "mine.zip"))
    assert metric(app, "Images").value == "40"
    assert metric(app, "Accuracy").value == f"{expected.accuracy:.2%}"
    assert any("mine.zip (uploaded class folders)" in c.value for c in app.caption)


def test_a_path_on_disk_is_evaluated_and_a_missing_one_says_so(trained_runs, trained, monkeypatch, tmp_path):
    use_runs(monkeypatch, trained_runs)
    data = tmp_path / "test-set.zip"
    data.write_bytes(class_folders_zip(lambda name: name))
    app = open_page("evaluate")
    app.segmented_control(key="evaluate_data").set_value("path").run()
    app.text_input(key="evaluate_path").set_value(str(tmp_path / "nowhere")).run()
    assert any("no such file or folder" in e.value for e in app.error)
    assert app.button(key="evaluate").disabled

    app.text_input(key="evaluate_path").set_value(str(data)).run()
    app.button(key="evaluate").click().run()
    assert_clean(app)
    expected = evaluate_run(Classifier.load(trained, "best"), str(data))
    assert metric(app, "Accuracy").value == f"{expected.accuracy:.2%}"


def test_side_by_side_shows_both_runs(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "small")
    copy_run(trained, runs_dir, "twin")
    use_runs(monkeypatch, runs_dir)
    app = open_page("evaluate")
    app.selectbox(key="compare_a:widget").set_value("small")
    app.selectbox(key="compare_b:widget").set_value("twin").run()
    app.button(key="compare").click().run()
    assert_clean(app)
    accuracy = f"{evaluate_run(Classifier.load(trained, 'best'), 'builtin').accuracy:.2%}"
    assert metric(app, "Accuracy of A: small · best").value == accuracy
    assert metric(app, "Accuracy of B: twin · best").value == accuracy
    assert metric(app, "Accuracy of B: twin · best").delta == "+0.00 points against A"
    assert len(charts(app)) == 3  # accuracy per class of both, and a confusion matrix each


def test_side_by_side_with_one_run_compares_its_best_and_last_checkpoints(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    app = open_page("evaluate")
    app.button(key="compare").click().run()
    assert_clean(app)
    best, last = (evaluate_run(Classifier.load(trained, tag), "builtin").accuracy for tag in ("best", "last"))
    assert metric(app, "Accuracy of A: small · best").value == f"{best:.2%}"
    assert metric(app, "Accuracy of B: small · last").value == f"{last:.2%}"
    assert metric(app, "Accuracy of B: small · last").delta == f"{100 * (last - best):+.2f} points against A"


# ---- what the network does not know, and what the page keeps -----------------------------------------------

def odd_images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    return [("noise32.png", encoded(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG")),
            ("one-pixel.png", encoded(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"))]


def test_odd_images_are_said_in_words_not_to_look_like_the_training_images(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    files = odd_images() + [(f"image-{i}.png", encoded(picture(i * 101), "PNG")) for i in range(5)] + \
        [("empty.png", b"")]
    expected = classify(Classifier.load(trained, "best"), files)
    assert [p.ood for p in expected[:2]] == [True, True]
    app = upload(open_page("classify"), "classify_upload", files)
    assert_clean(app)
    warnings = [w.value for w in app.warning]
    flagged = sum(bool(p.ood) for p in expected)
    assert any(w.startswith(f"{flagged} of 8 images do not look like what the network was trained on") for w in
               warnings), warnings
    assert any("noise32.png" in w for w in warnings)
    assert any("grainier than nearly all of the run's test images, like noise" in w for w in warnings)
    assert any("nearly flat, almost one colour" in w for w in warnings)
    table = app.dataframe[0].value
    assert list(table["Looks like its training images"][:2]) == ["no: unlike its training images"] * 2
    assert "None" not in table.astype(str).to_numpy().ravel().tolist()  # a file that could not be read: empty cells
    assert table["Top class"].iloc[-1] == "" and "empty.png" in table["Error"].iloc[-1]


def test_the_csv_says_which_run_checkpoint_and_tta_made_it(trained):
    files = odd_images() + [("image.png", encoded(picture(3), "PNG")), ("empty.png", b"")]
    results = classify(Classifier.load(trained, "last"), files, tta_flip=True)
    classifier = Classifier.load(trained, "last")
    rows = list(csv.DictReader(io.StringIO(predictions_csv(results, CLASSES, "small", "last",
                                                           classifier.tta_name(True)))))
    assert [row["File"] for row in rows] == [name for name, _ in files]
    assert {(row["Run"], row["Checkpoint"], row["TTA"]) for row in rows} == {("small", "last", "flip")}
    assert rows[0]["Looks like its training images"] == "no: unlike its training images"
    assert rows[-1]["Top class"] == "" and "empty" in rows[-1]["Error"] and "None" not in rows[-1].values()


def test_images_checkpoint_and_tta_survive_a_page_switch(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    files = [(f"image-{i}.png", encoded(picture(i * 97), "PNG")) for i in range(3)]
    app = upload(open_page("classify"), "classify_upload", files)
    app.toggle(key="classify_tta").set_value(True).run()
    app.segmented_control(key="classify_tag").set_value("last").run()
    before = headings(app)
    app.switch_page("pages/runs.py").run()
    app.switch_page("pages/classify.py").run()
    assert_clean(app)
    assert app.toggle(key="classify_tta").value is True and app.segmented_control(key="classify_tag").value == "last"
    assert headings(app) == before == [expected_heading(p) for p in
                                       classify(Classifier.load(trained, "last"), files, tta_flip=True)]
    assert any("3 images you uploaded before" in c.value for c in app.caption)


def test_a_run_picked_on_another_page_is_said_to_be_so_on_classify(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "good")
    weak = copy_run(trained, runs_dir, "trial-3")
    weak.metrics_path.write_text(json.dumps({"kind": "epoch", "epoch": 1, "step": 39, "train_loss": 2.2,
                                             "train_acc": 0.15, "eval_split": "test", "eval_loss": 2.1,
                                             "eval_acc": 0.11, "lr": 0.1, "images_per_s": 100.0,
                                             "elapsed": 30.0}) + "\n")
    use_runs(monkeypatch, runs_dir)
    app = open_page("runs")
    app.selectbox(key="run_choice:widget").set_value("trial-3").run()
    app.switch_page("pages/classify.py").run()
    assert_clean(app)
    assert app.selectbox(key="run_choice:widget").value == "trial-3"
    assert "Picked on another page; the default here is good." in [c.value for c in app.caption]
    app.selectbox(key="run_choice:widget").set_value("good").run()
    app.selectbox(key="run_choice:widget").set_value("trial-3").run()  # picked here: nothing to explain
    assert "Picked on another page; the default here is good." not in [c.value for c in app.caption]


def test_evaluate_keeps_its_data_upload_tta_and_report_across_a_page_switch(trained_runs, trained, monkeypatch):
    use_runs(monkeypatch, trained_runs)
    app = open_page("evaluate")
    app.segmented_control(key="evaluate_data").set_value("upload").run()
    upload(app, "evaluate_upload", [("mine.zip", class_folders_zip(lambda name: name))], "application/zip")
    app.segmented_control(key="evaluate_tta").set_value("flip").run()  # not the run's own (none)
    app.button(key="evaluate").click().run()
    accuracy = metric(app, "Accuracy").value
    app.switch_page("pages/classify.py").run()
    app.switch_page("pages/evaluate.py").run()
    assert_clean(app)
    assert app.segmented_control(key="evaluate_data").value == "upload"
    assert app.segmented_control(key="evaluate_tta").value == "flip"
    assert any(c.value.startswith("mine.zip, uploaded before") for c in app.caption)
    assert metric(app, "Accuracy").value == accuracy and not app.button(key="evaluate").disabled
    app.button(key="evaluate").click().run()  # the kept upload evaluates as the upload did
    assert_clean(app)
    assert metric(app, "Accuracy").value == accuracy


def test_a_run_without_a_checkpoint_points_to_resume_on_the_train_page(trained, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    copy_run(trained, runs_dir, "good")
    broken = copy_run(trained, runs_dir, "stopped-early", state="stopped")
    shutil.rmtree(broken.checkpoints)
    use_runs(monkeypatch, runs_dir)
    app = open_page("evaluate")
    app.selectbox(key="run_choice:widget").set_value("stopped-early").run()
    warnings = [w.value for w in app.warning]
    assert any("Resume it on the Train page" in w for w in warnings) and not any("Runs page" in w for w in warnings)
