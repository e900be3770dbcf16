"""`export --format hub`: a folder the Hugging Face Hub takes as it is (weights, config, model card whose metadata
huggingface_hub's own parser reads), and `import` taking it back as a run that predicts exactly as the first."""
import hashlib
import json

import torch
from huggingface_hub import ModelCard

from tests.helpers import ROOT, core_cli, core_main
from core.data.datasets import load_dataset
from core.deploy.onnx_model import OnnxModel
from core.deploy.predict import Classifier
from core.nn.checkpoint import read_meta
from core.runs.record import read_record
from core.runs.run import Run

EXAMPLE = Run(ROOT / "runs" / "example")


def round_trip(run: Run, tmp_path, *options: str, command=core_cli) -> tuple[dict, Run]:
    """export --format hub, then import, each with `command`: real processes (core_cli), or core_main here."""
    hub = tmp_path / f"{run.name}-hub"
    made = json.loads(command("export", str(run.dir), str(hub), "--format", "hub", *options).stdout)
    back = Run(tmp_path / "runs" / f"{run.name}-back")
    command("import", str(hub), "--run-dir", str(back.dir))
    images = load_dataset("builtin").test.images
    assert torch.equal(Classifier.load(back).probabilities(images), Classifier.load(run).probabilities(images))
    record = read_record(back.record_path)
    assert record["origin"] == f"imported from {hub}"
    assert record["weights_sha256"] == hashlib.sha256((hub / "model.safetensors").read_bytes()).hexdigest()
    return made, back


def test_a_trained_run_goes_out_as_a_hub_folder_with_its_onnx_file_and_comes_back_the_same(trained, tmp_path):
    made, back = round_trip(trained, tmp_path, "--onnx")
    hub = tmp_path / "small-hub"
    assert made["files"] == ["README.md", "config.json", "model.onnx", "model.onnx.json", "model.safetensors"]
    card = ModelCard.load(hub / "README.md")
    (result,) = card.data.eval_results
    best = read_meta(trained.checkpoints, "best")
    assert (result.task_type, result.dataset_type, result.dataset_split, result.metric_type) == \
        ("image-classification", "cifar10", "test", "accuracy")
    assert result.metric_value == round(best["eval_acc"], 4) and "built-in slice" in result.dataset_name
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["cifar10"]
    for section in ("## Intended use", "## Limitations", "## Training procedure", "## Reproducibility record"):
        assert section in card.text
    assert "JPEG copy" in card.text and "| Total parameters |" in card.text
    config = json.loads((hub / "config.json").read_text())
    assert config["classes"] == best["classes"] and config["mean"] == best["mean"] and config["std"] == best["std"]
    assert OnnxModel.load(hub / "model.onnx").classes == best["classes"]
    assert back.status()["state"] == "finished" and back.config().arch == trained.config().arch


def test_the_example_round_trips_and_its_card_names_the_jpeg_copy(tmp_path):
    made, _ = round_trip(EXAMPLE, tmp_path, command=core_main)  # the trained run's round trip is the processes
    assert made["files"] == ["README.md", "config.json", "model.safetensors"]
    (result,) = ModelCard.load(tmp_path / "example-hub" / "README.md").data.eval_results
    assert result.metric_value == 0.87 and result.dataset_name == "CIFAR-10, JPEG copy (quality 75, 4:2:0)"


def test_bad_folders_are_messages(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = core_main("import", str(empty), "--run-dir", str(tmp_path / "runs" / "x"), check=False)
    assert refused.returncode == 2 and "not one `export --format hub` wrote" in refused.stderr
    taken = core_main("export", str(trained.dir), str(empty), "--format", "hub", check=False)
    assert taken.returncode == 2 and "already exists" in taken.stderr
    no_design = core_main("import", str(tmp_path / "weights.pt"), "--run-dir", str(tmp_path / "runs" / "y"),
                          check=False)
    assert no_design.returncode == 2 and "--design" in no_design.stderr


def test_an_export_that_fails_half_way_leaves_no_folder_behind(trained, tmp_path):
    """The weights are written before the ONNX file's data is read: data that is not there fails the export then,
    and neither the folder nor its hidden staging folder is left."""
    out = tmp_path / "half"
    failed = core_main("export", str(trained.dir), str(out), "--format", "hub", "--onnx", "--data",
                       str(tmp_path / "no-such-data"), check=False)
    assert failed.returncode == 2 and "no-such-data" in failed.stderr and "Traceback" not in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
