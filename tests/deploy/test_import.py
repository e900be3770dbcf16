"""Importing `.pt` weights: a kuangliu-style state_dict of a really trained run comes back as a run that predicts
exactly as the original; files holding code or whole models are refused without running anything; a design that
does not fit names the first tensor that differs."""
import json
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import core_cli, core_main, Payload
from core.data.datasets import load_dataset
from core.deploy.importer import OURS, WeightsError, _apply, import_weights
from core.deploy.predict import Classifier, evaluate_run
from core.design.config import RunConfig
from core.nn.checkpoint import load_checkpoint
from core.runs.run import Run


def import_cli(weights: Path, design: Path, run_dir: Path, *extra: str, process: bool = False
               ) -> subprocess.CompletedProcess:
    """`python -m core import ...`: in a real process for the import that succeeds, else through core.cli.main here
    (a payload that ran would leave its marker file all the same)."""
    args = ("import", str(weights), "--design", str(design), "--run-dir", str(run_dir), *extra)
    return core_cli(*args, check=False, timeout=300) if process else core_main(*args, check=False)


def kuangliu_state_dict(run: Run) -> dict[str, torch.Tensor]:
    """The run's weights under the names kuangliu's pytorch-cifar ResNet gives them."""
    return {_apply(OURS, key): value for key, value in load_checkpoint(run.checkpoints).weights.items()}


@pytest.fixture
def design(trained, tmp_path) -> Path:
    path = tmp_path / "design.json"
    path.write_text(json.dumps(trained.config().arch.to_dict()))  # a bare spec, as the Design page downloads it
    return path


def test_a_kuangliu_state_dict_imports_and_predicts_exactly_as_the_original(trained, design, tmp_path):
    weights = kuangliu_state_dict(trained)
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight", "linear.weight"} <= set(weights)
    saved = tmp_path / "ckpt.pth"  # as kuangliu's main.py saves it, from a DataParallel model
    torch.save({"net": {f"module.{k}": v for k, v in weights.items()}, "acc": 40.0, "epoch": 1}, saved)
    run_dir = tmp_path / "runs" / "seed"
    done = import_cli(saved, design, run_dir, process=True)
    assert done.returncode == 0, done.stderr
    imported = Run(run_dir)
    assert imported.status()["state"] == "finished" and imported.summary()["imported_from"] == str(saved)
    test = load_dataset("builtin").test
    original, copy = Classifier.load(trained), Classifier.load(imported)
    assert torch.equal(copy.probabilities(test.images[:200]), original.probabilities(test.images[:200]))
    assert evaluate_run(copy, "builtin").accuracy == evaluate_run(original, "builtin").accuracy


def test_an_imported_run_cannot_be_resumed_and_says_how_to_train_its_design(trained, design, tmp_path):
    saved = tmp_path / "weights.pt"
    torch.save(kuangliu_state_dict(trained), saved)
    run_dir = tmp_path / "runs" / "seed"
    assert import_cli(saved, design, run_dir).returncode == 0
    best = (run_dir / "checkpoints" / "best.json").read_text()
    resumed = core_cli("train", "--resume", str(run_dir), "--epochs", "1", "--device", "cpu", check=False, timeout=300)
    assert resumed.returncode == 2
    assert "seed was imported from weights.pt, not trained here: it has weights but no training state" in \
        resumed.stderr and f"--config {run_dir / 'config.json'}" in resumed.stderr
    assert (run_dir / "checkpoints" / "best.json").read_text() == best  # nothing trained over its weights
    assert not (run_dir / "metrics.jsonl").exists() and Run(run_dir).status()["state"] == "finished"


def test_normalisation_it_was_trained_with_is_kept(trained, design, tmp_path):
    saved = tmp_path / "weights.pt"
    torch.save(kuangliu_state_dict(trained), saved)
    done = import_cli(saved, design, tmp_path / "runs" / "k", "--normalization", "kuangliu")
    assert done.returncode == 0, done.stderr
    meta = load_checkpoint(tmp_path / "runs" / "k" / "checkpoints").meta
    assert meta["std"] == [0.2023, 0.1994, 0.2010] and json.loads(done.stdout)["std"] == meta["std"]


@pytest.mark.parametrize("protocol, message", [
    (None, "holds code"),                                     # torch.save's zip file
    (2, "holds code"),                                        # a bare pickle, as torch.save once wrote them
    (5, "not a PyTorch weights file that can be read safely"),  # refused at an opcode, before any callable
])
def test_a_file_with_code_is_refused_and_its_payload_never_runs(trained, design, tmp_path, protocol, message):
    marker = tmp_path / "payload-ran"
    hostile = tmp_path / "weights.pt"
    content = {"x": Payload(marker), "conv1.weight": torch.zeros(3)}
    if protocol is None:
        torch.save(content, hostile)
    else:
        hostile.write_bytes(pickle.dumps(content, protocol=protocol))
    if protocol is None:  # through the command, as a user would
        done = import_cli(hostile, design, tmp_path / "runs" / "evil")
        assert done.returncode == 2 and message in done.stderr and "nothing in it ran" in done.stderr, done.stderr
    else:
        with pytest.raises(WeightsError, match=message):
            import_weights(hostile, hostile.name, RunConfig.from_dict(json.loads(design.read_text())),
                           tmp_path / "runs" / "evil")
    assert not marker.exists()
    assert not (tmp_path / "runs" / "evil").exists()


def test_a_whole_pickled_model_is_refused(trained, design, tmp_path):
    saved = tmp_path / "model.pt"
    torch.save(Classifier.load(trained).model, saved)
    done = import_cli(saved, design, tmp_path / "runs" / "whole")
    assert done.returncode == 2 and "whole pickled object" in done.stderr and "state_dict()" in done.stderr
    assert not (tmp_path / "runs" / "whole").exists()


def test_a_design_that_does_not_fit_names_the_first_tensor_that_differs(trained, design, tmp_path):
    weights = kuangliu_state_dict(trained)
    spec = json.loads(design.read_text())
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps(spec | {"stages": [spec["stages"][0] | {"channels": 24}, *spec["stages"][1:]]}))
    missing = {k: v for k, v in weights.items() if k != "layer2.0.shortcut.0.weight"}
    extra = weights | {"layer3.0.conv1.weight": torch.zeros(1)}
    cases = [(weights, wider,
              "tensor 'layer1.0.conv1.weight' has shape (16, 16, 3, 3), the design needs (24, 16, 3, 3)"),
             (missing, design, "has no tensor 'layer2.0.shortcut.0.weight'"),
             (extra, design, "tensor 'layer3.0.conv1.weight' has no place in the design")]
    for i, (state, spec_file, message) in enumerate(cases):
        saved = tmp_path / f"case{i}.pt"
        torch.save(state, saved)
        with pytest.raises(WeightsError) as refused:
            import_weights(saved, saved.name, RunConfig.from_dict(json.loads(spec_file.read_text())),
                           tmp_path / "runs" / f"case{i}")
        assert message in str(refused.value)
        assert not (tmp_path / "runs" / f"case{i}").exists()
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    done = import_cli(tmp_path / "notes.pt", design, tmp_path / "runs" / "notes")
    assert done.returncode == 2 and "notes.pt: not a PyTorch weights file" in done.stderr
