"""Using a trained run: predict on files, Grad-CAM, evaluate on the test split and custom sets."""
import io
import os
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, core_main
from core.data.datasets import load_dataset
from core.deploy.predict import Classifier, classify, evaluate_run
from core.runs.run import Run


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_predict_cli_gives_json_per_file_and_a_clear_error_for_a_bad_one(trained, tmp_path):
    test = load_dataset("builtin").test
    good = tmp_path / "plane.png"
    Image.fromarray(test.images[0].permute(1, 2, 0).numpy()).resize((200, 150)).save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    out = subprocess.run([sys.executable, "-m", "core", "predict", "--run", str(trained.dir), str(good), str(bad)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1  # not every file was classified
    rows = json.loads(out.stdout)
    assert rows[0]["ok"] and len(rows[0]["top"]) == 3
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert rows[0]["top"][0]["probability"] >= rows[0]["top"][1]["probability"]
    assert not rows[1]["ok"] and "notes.png" in rows[1]["error"]


@pytest.mark.parametrize("device, message", [("tpu", "device 'tpu': use auto, cpu, cuda, cuda:N or mps"),
                                            ("cuda", "device cuda: no CUDA GPU is visible to torch here")])
def test_predict_on_a_device_this_machine_lacks_says_so(trained, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = core_main("predict", "--run", str(trained.dir), "--device", device, "any.png", check=False)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {message}") and "Traceback" not in out.stderr


def test_classify_matches_the_models_own_forward_pass(trained):
    test = load_dataset("builtin").test
    classifier = Classifier.load(trained, "best")
    files = [(f"img{i}.png", png_bytes(Image.fromarray(test.images[i].permute(1, 2, 0).numpy()))) for i in range(8)]
    predictions = classify(classifier, files, grad_cam=True)
    direct = classifier.probabilities(test.images[:8])
    for pred, row in zip(predictions, direct):
        assert torch.equal(pred.input, test.images[predictions.index(pred)])  # 32x32 passes through bit-exact
        assert list(pred.probabilities.values()) == pytest.approx(row.tolist(), abs=1e-6)
        assert pred.cam.shape == (32, 32) and pred.cam.min() >= 0 and pred.cam.max() == pytest.approx(1.0)


def test_evaluate_on_the_builtin_slice_equals_a_direct_count(trained):
    classifier = Classifier.load(trained, "best")
    report = evaluate_run(classifier, "builtin", mistakes=5)
    test = load_dataset("builtin").test
    predicted = classifier.probabilities(test.images).argmax(1)
    assert report.images == 1000
    assert report.accuracy == pytest.approx((predicted == test.labels).float().mean().item())
    assert sum(map(sum, report.confusion)) == 1000
    assert report.confusion[3][5] == int(((test.labels == 3) & (predicted == 5)).sum())
    confidences = [m.confidence for m in report.mistakes]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert all(m.true != m.predicted for m in report.mistakes)


def test_evaluate_with_six_test_views_counts_what_the_views_predict(trained):
    from core.nn.infer import predict_logits

    classifier = Classifier.load(trained, "best")
    out = core_main("evaluate", "--run", str(trained.dir), "--data", "builtin", "--tta-flip", "--tta-shift",
                    "--mistakes", "0")
    test = load_dataset("builtin").test
    logits = predict_logits(classifier.model, test.images, classifier.normalizer, classifier.device, tta_flip=True,
                            tta_shift=True)
    assert json.loads(out.stdout)["accuracy"] == pytest.approx((logits.argmax(1) == test.labels).float().mean().item())


def test_evaluate_on_a_custom_zip_and_its_wrong_class_folder(trained, tmp_path):
    test = load_dataset("builtin").test
    good, bad = tmp_path / "custom.zip", tmp_path / "wrong.zip"
    with zipfile.ZipFile(good, "w") as z, zipfile.ZipFile(bad, "w") as zb:
        for i in range(40):
            cls = classifier_classes()[int(test.labels[i])]
            big = Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize((96, 96))
            z.writestr(f"{cls}/{i}.png", png_bytes(big))
            zb.writestr(f"{'aeroplane' if cls == 'airplane' else cls}/{i}.png", png_bytes(big))
    report = evaluate_run(Classifier.load(trained, "best"), str(good))
    assert report.images == 40 and 0 <= report.accuracy <= 1
    with pytest.raises(Exception, match="aeroplane"):
        evaluate_run(Classifier.load(trained, "best"), str(bad))
    out = subprocess.run([sys.executable, "-m", "core", "evaluate", "--run", str(trained.dir), "--data", str(bad)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "aeroplane" in out.stderr and "Traceback" not in out.stderr


def classifier_classes():
    return list(load_dataset("builtin").classes)


def test_exported_run_predicts_the_same_at_half_the_size(trained, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "export", str(trained.dir), str(tmp_path / "runs" / "shipped")],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    shipped = Run(tmp_path / "runs" / "shipped")
    assert "checkpoints/best.safetensors" in json.loads(out.stdout)["files"]
    assert not (shipped.checkpoints / "last.json").exists() and shipped.status()["state"] == "finished"
    full = (trained.checkpoints / "best.safetensors").stat().st_size
    assert (shipped.checkpoints / "best.safetensors").stat().st_size < 0.6 * full
    a = evaluate_run(Classifier.load(trained, "best"), "builtin")
    b = evaluate_run(Classifier.load(shipped, "best"), "builtin")
    # fp16 rounding may flip a borderline image or three; counted in images, as float32 accuracies differ by 3.00002e-3
    assert a.images == b.images and round(abs(a.accuracy - b.accuracy) * a.images) <= 3


def test_an_uploaded_archive_is_evaluated_as_the_same_file_on_disk_and_errors_name_the_upload(trained, tmp_path):
    from core.data.sources import DataError
    from core.deploy.predict import UPLOAD_DIR, evaluate_archive

    test = load_dataset("builtin").test
    classes = classifier_classes()
    good, wrong = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(good, "w") as z, zipfile.ZipFile(wrong, "w") as zw:
        for i in range(0, 1000, 20):
            png = png_bytes(Image.fromarray(test.images[i].permute(1, 2, 0).numpy()))
            z.writestr(f"set/{classes[int(test.labels[i])]}/{i}.png", png)
            zw.writestr(f"{classes[int(test.labels[i])]}/{i}.png", png)
        zw.writestr("lion/0.png", png)
    (tmp_path / "good.zip").write_bytes(good.getvalue())
    classifier = Classifier.load(trained, "best")

    report = evaluate_archive(classifier, "good.zip", good.getvalue(), mistakes=5)
    on_disk = evaluate_run(classifier, str(tmp_path / "good.zip"), mistakes=5)
    assert report.data == "good.zip (uploaded class folders)"
    assert (report.images, report.accuracy, report.confusion) == (50, on_disk.accuracy, on_disk.confusion)
    with pytest.raises(DataError, match=r"^wrong\.zip: unknown class folder\(s\) lion"):
        evaluate_archive(classifier, "wrong.zip", wrong.getvalue())
    with pytest.raises(DataError, match="photo.jpg: not an archive"):
        evaluate_archive(classifier, "photo.jpg", b"\xff\xd8")
    assert not list(UPLOAD_DIR.glob("upload*"))  # no upload is left behind


def test_sample_files_are_one_lossless_test_image_per_class_named_after_it():
    from core.data.images import open_image, to_pixels
    from core.deploy.predict import sample_files

    dataset = load_dataset("builtin")
    files = sample_files()
    assert [name.split("-")[0] for name, _ in files] == list(dataset.classes)
    for name, data in files:
        index = int(name.split("-")[1].removesuffix(".png"))
        assert torch.equal(torch.from_numpy(to_pixels(open_image(data, name))), dataset.test.images[index])
        assert dataset.classes[int(dataset.test.labels[index])] == name.split("-")[0]


def test_classify_keeps_a_thumbnail_of_the_whole_image_upright(trained):
    wide = Image.new("RGB", (800, 400), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn: upright it is tall
    buffer = io.BytesIO()
    wide.save(buffer, format="JPEG", exif=exif)
    (prediction,) = classify(Classifier.load(trained, "best"), [("phone.jpg", buffer.getvalue())])
    assert prediction.thumbnail.shape == (192, 96, 3) and prediction.thumbnail.dtype == np.uint8


@pytest.mark.parametrize("name, params, accuracy", [("example", 272_474, 0.8), ("laptop", 2_063_050, 0.85)])
def test_a_shipped_run_lists_predicts_and_evaluates(name, params, accuracy):
    shipped = Run(ROOT / "runs" / name)
    assert shipped.status()["state"] == "finished" and shipped.summary()["params"] == params
    assert shipped.status()["half"] and shipped.config().preset == ("resnet20" if name == "example" else name)
    # the built-in slice's test images are CIFAR-10 test images: the shipped runs never trained on them
    report = evaluate_run(Classifier.load(shipped, "best"), "builtin")
    assert report.images == 1000 and report.accuracy > accuracy
    out = subprocess.run([sys.executable, "-m", "core", "runs"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "RESNET_STUDIO_RUNS": str(ROOT / "runs")}, check=True)
    assert name in [row["name"] for row in json.loads(out.stdout)]
