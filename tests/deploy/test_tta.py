"""Every reader of a run tests as the run did: evaluate and predict use the run's own test-time augmentation unless
told otherwise (--no-tta, --tta-flip), and say which they used."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, core_main
from core.data.datasets import load_dataset
from core.deploy.onnx_model import OnnxModel
from core.deploy.predict import Classifier, evaluate_run
from core.nn.infer import predict_logits
from core.runs.run import Run

LAPTOP = ROOT / "runs" / "laptop"   # trained and tested with 6-view TTA (flip and 1-pixel shifts)
SIX = "flip and 1-pixel shifts (6 views)"
EXAMPLE = ROOT / "runs" / "example"  # without


def evaluate(data: str, *args: str) -> dict:
    return json.loads(core_main("evaluate", "--data", data, "--mistakes", "0", *args).stdout)


def test_evaluate_uses_the_runs_own_tta_by_default_and_says_so(test_slice):
    own, off = evaluate(test_slice, "--run", str(LAPTOP)), evaluate(test_slice, "--run", str(LAPTOP), "--no-tta")
    assert own["tta_flip"] is own["tta_shift"] is True and own["tta"] == f"{SIX}: the run's own"
    assert off["tta_flip"] is off["tta_shift"] is False and off["tta"] == f"none: asked for; the run's own is {SIX}"
    flip = evaluate(test_slice, "--run", str(LAPTOP), "--tta-flip")  # the flip alone: it keeps the run's own shifts
    assert (flip["tta_flip"], flip["tta_shift"], flip["tta"]) == (True, True, f"{SIX}: the run's own")
    classifier = Classifier.load(Run(LAPTOP), "best")
    assert own["accuracy"] == pytest.approx(evaluate_run(classifier, test_slice, 0, True, True).accuracy)
    assert off["accuracy"] == pytest.approx(evaluate_run(classifier, test_slice, 0, False, False).accuracy)
    assert own["accuracy"] != off["accuracy"]
    plain = evaluate(test_slice, "--run", str(EXAMPLE))
    assert plain["tta_flip"] is False and plain["tta"] == "none: the run's own"
    flipped = evaluate(test_slice, "--run", str(EXAMPLE), "--tta-flip")
    assert flipped["tta_flip"] is True and flipped["tta"].endswith("asked for; the run's own is none")


def test_predict_uses_the_runs_own_tta_and_says_so(tmp_path):
    test = load_dataset("builtin").test
    files = []
    for i in range(3):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    own = json.loads(core_main("predict", "--run", str(LAPTOP), *files).stdout)
    off = json.loads(core_main("predict", "--run", str(LAPTOP), "--no-tta", *files).stdout)
    assert {row["tta"] for row in own} == {f"{SIX}: the run's own"}
    assert {row["tta"] for row in off} == {f"none: asked for; the run's own is {SIX}"}
    classifier = Classifier.load(Run(LAPTOP), "best")
    expected = classifier.probabilities(test.images[:3], True, True)
    for row, probabilities in zip(own, expected):
        assert list(row["probabilities"].values()) == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert own[0]["probabilities"] != off[0]["probabilities"]


@pytest.mark.long
def test_an_onnx_export_carries_the_runs_tta_and_its_readers_use_it(tmp_path, test_slice):
    model = tmp_path / "laptop.onnx"
    core_main("export", str(LAPTOP), str(model), "--format", "onnx", "--data", test_slice)
    own = evaluate(test_slice, "--onnx", str(model))
    off = evaluate(test_slice, "--onnx", str(model), "--no-tta")
    assert own["tta_flip"] is own["tta_shift"] is True and own["tta"] == f"{SIX}: the run's own"
    assert off["tta_flip"] is off["tta_shift"] is False and own["accuracy"] != off["accuracy"]
    assert own["accuracy"] == evaluate(test_slice, "--onnx", str(model), "--tta-flip")["accuracy"]
    # the 6 views on a device are the run's: onnxruntime's logits against PyTorch's, in fp32
    images = load_dataset(test_slice).test.images[:64]
    classifier = Classifier.load(Run(LAPTOP), "best")
    expected = predict_logits(classifier.model, images, classifier.normalizer, classifier.device, tta_flip=True,
                              precision="fp32", tta_shift=True)
    device = OnnxModel.load(model).logits(images.numpy(), True, True)
    assert np.abs(device - expected.numpy()).max() < 2e-3
    by_run = evaluate(test_slice, "--run", str(LAPTOP))  # in the run's own precision: one image of 200 may differ
    assert own["accuracy"] == pytest.approx(by_run["accuracy"], abs=0.005)
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    rows = json.loads(core_main("predict", "--onnx", str(model), str(tmp_path / "0.png")).stdout)
    assert rows[0]["tta"] == f"{SIX}: the run's own"


@pytest.mark.parametrize("flip, shift", [("garbage", "{"), ("1", "null"), (None, None)])
def test_an_onnx_models_unreadable_tta_record_means_none_and_says_so(flip, shift):
    """A hand-edited or older export: its TTA flags are unreadable or missing. Readers use none, never crash."""
    meta = {"classes": "[]"} | ({"tta_flip": flip, "tta_shift": shift} if flip is not None else {})
    model = OnnxModel(None, meta)
    assert (model.own_tta_flip, model.own_tta_shift, model.tta(None), model.shift(None)) == (None, False, False, False)
    assert model.tta_said(None) == "none" and model.tta_said(True).startswith("flip (each image averaged")
