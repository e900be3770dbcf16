"""Every reader of a run tests as the run did: evaluate and predict use the run's own test-time augmentation unless
told otherwise (--no-tta, --tta-flip), and say which they used."""
import json

import pytest
from PIL import Image

from tests.helpers import ROOT, core_main
from core.data.datasets import load_dataset
from core.deploy.predict import Classifier, evaluate_run
from core.runs.run import Run

LAPTOP = ROOT / "runs" / "laptop"   # trained and tested with flip TTA
EXAMPLE = ROOT / "runs" / "example"  # without


def evaluate(*args: str) -> dict:
    return json.loads(core_main("evaluate", "--data", "builtin", "--mistakes", "0", *args).stdout)


def test_evaluate_uses_the_runs_own_tta_by_default_and_says_so():
    own, off = evaluate("--run", str(LAPTOP)), evaluate("--run", str(LAPTOP), "--no-tta")
    assert own["tta_flip"] is True and own["tta"] == "flip (each image averaged with its mirror): the run's own"
    assert off["tta_flip"] is False and off["tta"] == "none: asked for; the run's own is flip"
    classifier = Classifier.load(Run(LAPTOP), "best")
    assert own["accuracy"] == pytest.approx(evaluate_run(classifier, "builtin", 0, tta_flip=True).accuracy)
    assert off["accuracy"] == pytest.approx(evaluate_run(classifier, "builtin", 0, tta_flip=False).accuracy)
    assert own["accuracy"] != off["accuracy"]
    plain = evaluate("--run", str(EXAMPLE))
    assert plain["tta_flip"] is False and plain["tta"] == "none: the run's own"
    flipped = evaluate("--run", str(EXAMPLE), "--tta-flip")
    assert flipped["tta_flip"] is True and flipped["tta"].endswith("asked for; the run's own is none")


def test_predict_uses_the_runs_own_tta_and_says_so(tmp_path):
    test = load_dataset("builtin").test
    files = []
    for i in range(3):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    own = json.loads(core_main("predict", "--run", str(LAPTOP), *files).stdout)
    off = json.loads(core_main("predict", "--run", str(LAPTOP), "--no-tta", *files).stdout)
    assert {row["tta"] for row in own} == {"flip (each image averaged with its mirror): the run's own"}
    assert {row["tta"] for row in off} == {"none: asked for; the run's own is flip"}
    classifier = Classifier.load(Run(LAPTOP), "best")
    expected = classifier.probabilities(test.images[:3], True)
    for row, probabilities in zip(own, expected):
        assert list(row["probabilities"].values()) == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert own[0]["probabilities"] != off[0]["probabilities"]


def test_an_onnx_export_carries_the_runs_tta_and_its_readers_use_it(tmp_path):
    model = tmp_path / "laptop.onnx"
    core_main("export", str(LAPTOP), str(model), "--format", "onnx", "--data", "builtin")
    own = evaluate("--onnx", str(model))
    off = evaluate("--onnx", str(model), "--no-tta")
    assert own["tta_flip"] is True and own["tta"] == "flip (each image averaged with its mirror): the run's own"
    assert off["tta_flip"] is False and own["accuracy"] != off["accuracy"]
    assert own["accuracy"] == evaluate("--onnx", str(model), "--tta-flip")["accuracy"]
    Image.fromarray(load_dataset("builtin").test.images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    rows = json.loads(core_main("predict", "--onnx", str(model), str(tmp_path / "0.png")).stdout)
    assert rows[0]["tta"] == "flip (each image averaged with its mirror): the run's own"
