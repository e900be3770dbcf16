"""Devices as students have them, without them: running out of memory (simulated in a real training process) and
resuming with a smaller batch."""
import json
import os
import textwrap

import pytest

from core.runs.run import Run
from conftest import QUICK_ARCH, ROOT, SMALL, core_cli

# Loaded by every Python process started with its folder on PYTHONPATH: a training step on more than OOM_ABOVE
# images raises torch's out-of-memory error, with the allocation a CUDA one names.
OOM = textwrap.dedent('''
    import os, sys
    if os.environ.get("OOM_ABOVE"):
        import importlib.abc, importlib.util

        class Patch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "core.engine.trainer":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.util.find_spec(name)
                load = spec.loader.exec_module

                def exec_module(module):
                    load(module)
                    step = module.Trainer.step

                    def out_of_memory(self, images, *args):
                        import torch
                        if len(images) > int(os.environ["OOM_ABOVE"]):
                            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                        return step(self, images, *args)
                    module.Trainer.step = out_of_memory
                spec.loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, Patch())
''')


@pytest.fixture
def out_of_memory_above(tmp_path, monkeypatch):
    """Training steps on more than `images` images run out of memory, in every process the test starts."""
    (tmp_path / "oom").mkdir()
    (tmp_path / "oom" / "sitecustomize.py").write_text(OOM)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "oom"), str(ROOT)]))

    def set_up(images: int) -> None:
        monkeypatch.setenv("OOM_ABOVE", str(images))
    return set_up


def test_out_of_memory_at_the_first_step_says_what_fits_and_the_run_resumes_with_that_batch(
        tmp_path, out_of_memory_above):
    out_of_memory_above(128)
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    cfg["train"] |= {"batch_size": 256, "precision": "fp32"}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "big")
    out = core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--device", "cpu", check=False)
    assert out.returncode == 1
    error = run.status()["error"]
    assert run.status()["state"] == "failed"
    assert error.startswith("out of memory at batch 256 (") and "GiB used" in error and "GiB free of" in error
    assert f"--resume {run.dir} --batch-size 128" in error, error
    assert not (run.checkpoints / "last.json").exists()  # nothing trained: the resume starts it over

    out = core_cli("train", "--resume", str(run.dir), "--batch-size", "128", "--device", "cpu", check=False)
    assert out.returncode == 0, run.log_tail()
    assert run.status()["state"] == "finished" and run.config().train.batch_size == 128
    assert json.loads(run.results_path.read_text())["accuracy"] > 0


def test_a_resume_with_another_batch_takes_it_from_the_saved_epoch_on(tmp_path):
    cfg = json.loads(json.dumps(SMALL)) | {"arch": QUICK_ARCH}
    cfg["train"] |= {"batch_size": 64, "precision": "fp32", "epochs": 2}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    run = Run(tmp_path / "runs" / "mid")
    core_cli("train", "--config", str(path), "--run-dir", str(run.dir), "--device", "cpu", "--epochs", "1")
    core_cli("train", "--resume", str(run.dir), "--epochs", "2", "--batch-size", "32", "--device", "cpu")
    log = run.log_path.read_text()
    assert "resumed at epoch 1 step 0" in log and "batch 64 -> 32: continuing at epoch 1 step 0" in log
    assert run.status()["state"] == "finished" and run.config().train.batch_size == 32
    steps = [m["step"] for m in run.metrics() if m["kind"] == "epoch"]
    assert steps == [5000 // 64, 2 * (5000 // 32)]  # the second epoch in steps of 32
