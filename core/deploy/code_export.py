"""A finished run as code a grader runs with torch and torchvision alone (`python -m core export RUN OUT --format
code`); nothing written here imports `core`.

    OUT/
        model.py            the network in plain PyTorch (a block class and a builder, as torchvision's resnet.py
                            reads); `load_model("weights.pt")` takes float images in [0, 1], the normalisation inside
        weights.pt          the checkpoint's weights as a state dict in fp32 (torch.load(..., weights_only=True))
        train.py            the run's recipe, every setting with the studio's math (the speed-run ones too: linear
                            schedule, alternating flip, averaging ramp, frozen BatchNorm scales, BatchNorm bias lr,
                            shift TTA, a whitened stem computed from the training images); prints `parameters: N`
                            first and `test accuracy: X%` last, and writes
                            run.zip: config, per-epoch metrics and the checkpoint, as a run folder holds them
                            (`python -m core import run.zip` reads it back: core.deploy.run_zip)
        notebook.ipynb      train.py's cells as a notebook (Colab, Kaggle)
        README.md           the commands and the run's figures

The files are made from the templates in code_template/ (real files, so they read as code). Before anything is
written, the generated model.py is loaded apart from this studio's code and must give the run's logits. The Runs page
downloads the folder as one zip (export_code_zip).
"""
from __future__ import annotations

import importlib.util
import io
import json
import math
import pprint
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from core.design.budget import count
from core.design.table import hyperparameters
from core.errors import StudioError
from core.files import whole_folder, write_atomic
from core.nn.checkpoint import load_checkpoint
from core.nn.model import build_model
from core.runs.record import data_copy, read_record
from core.runs.run import Run
from core.units import duration_text

TEMPLATES = Path(__file__).with_name("code_template")
MODEL, WEIGHTS, TRAIN, NOTEBOOK, README = "model.py", "weights.pt", "train.py", "notebook.ipynb", "README.md"
CELL = re.compile(r"^# %%(?: \[(markdown)\])?$", re.MULTILINE)  # the percent format's cell marks (jupytext's)
MAX_LOGIT_DIFFERENCE = 1e-3  # fp32 on the same CPU: the same numbers but for the order of a few additions


class CodeExportError(StudioError):
    pass


def literal(value) -> str:
    """A Python literal of plain JSON data (dicts keep their order)."""
    return pprint.pformat(value, width=110, sort_dicts=False)


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], (TEMPLATES / template).read_text())


def epochs_to_train(run: Run, cfg) -> int:
    """The run's epochs; for a run trained for a time, the epochs it reached in that time (rounded up), over which
    train.py stretches the schedule as the run stretched it over its time."""
    if not cfg.train.time_limit:
        return cfg.train.epochs
    done = [m["epoch"] for m in run.metrics() if m.get("kind") == "epoch"]
    return max(1, math.ceil(max(done, default=cfg.train.epochs)))


def model_source(run: Run, meta: dict, params: int) -> str:
    return fill(MODEL + ".txt", {"NAME": run.name, "PARAMS": f"{params:,}", "ARCH": literal(meta["spec"]),
                                 "CLASSES": literal(meta["classes"]), "MEAN": literal(meta["mean"]),
                                 "STD": literal(meta["std"])})


def train_source(run: Run, cfg, model_py: str, epochs: int) -> str:
    # model.py without its docstring and imports (train.py imports the same and more)
    lines = model_py.split('"""', 2)[2].lstrip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith(("import ", "from ")))
    network = "\n".join(lines[first:])
    run_config = cfg.to_dict() | {"params": count(cfg.arch).params}
    return fill(TRAIN + ".txt", {"NAME": run.name, "RUN": literal(run_config), "EPOCHS": str(epochs),
                                 "MODEL": network.rstrip() + "\n\n"})


def notebook(source: str) -> dict:
    """The percent-format script as an nbformat 4 notebook, one cell per `# %%`."""
    marks = list(CELL.finditer(source))
    cells = []
    for mark, following in zip(marks, marks[1:] + [None]):
        text = source[mark.end():following.start() if following else len(source)].strip("\n")
        if mark.group(1) == "markdown":
            lines = [line.removeprefix("#").removeprefix(" ") for line in text.splitlines()]
            cells.append({"cell_type": "markdown", "metadata": {}, "source": "\n".join(lines)})
        else:
            cells.append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                          "source": text})
    return {"nbformat": 4, "nbformat_minor": 5, "cells": [{"id": f"cell-{i}", **c} for i, c in enumerate(cells)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}, "accelerator": "GPU"}}


def tta_phrase(meta: dict) -> str:
    """The test-time augmentation a checkpoint was measured with, for the README's accuracy."""
    views = ["flip"] * bool(meta.get("tta_flip")) + ["1-pixel shift"] * bool(meta.get("tta_shift"))
    return f" (with {' and '.join(views)} test-time augmentation)" if views else ""


def readme(run: Run, cfg, meta: dict, epochs: int) -> str:
    record = read_record(run.record_path)
    data = data_copy(record, meta.get("data"))
    counted = count(cfg.arch)
    accuracy = meta.get("eval_acc")
    measured = (f"**{accuracy:.2%}** on the {meta.get('eval_split') or 'test'} split of {data}, the weights of "
                f"epoch {meta.get('epoch')}" + tta_phrase(meta)
                if accuracy is not None else "not measured in the studio (the weights were imported)")
    epochs_done = [m for m in run.metrics() if m.get("kind") == "epoch"]
    elapsed = f"{duration_text(epochs_done[-1]['elapsed'])} on {run.status().get('device_name') or 'its device'}" \
        if epochs_done else "not known (imported)"
    rows = "\n".join(f"| {name} | {value} |" for name, value in
                     hyperparameters(cfg, imported=bool(meta.get("imported_from"))).items())
    reached = epochs_done[-1]["epoch"] if epochs_done else epochs
    held_out = (f" The run held out {cfg.train.val_fraction:.0%} of its training images to validate on; {TRAIN} "
                f"trains on all of them and tests on the test split.") if cfg.train.val_fraction else ""
    time_note = (f" The run trained for {duration_text(cfg.train.time_limit)} and reached epoch {reached:.3g}; "
                 f"{TRAIN} trains {epochs} epochs, with the schedule stretched over them as the run stretched it "
                 f"over its time (warm-up included).") if cfg.train.time_limit else ""
    return f"""# {run.name}

A residual network for CIFAR-10 designed in ResNet Studio, as code that needs only `torch` and `torchvision`.
The accuracy below was measured on the data the run trained on; {TRAIN} downloads torchvision's lossless CIFAR-10
unless given `--data`, and accuracies on one copy of CIFAR-10 do not carry over exactly to another.

| Figure | Value |
| --- | --- |
| Trainable parameters | {counted.params:,} |
| Multiply-accumulates per image | {counted.macs / 1e6:.1f} M |
| Test accuracy | {measured} |
| Training time | {elapsed} |

## Files

- `{MODEL}`: the network (`BasicBlock`, `ResNet`, `resnet()`); `load_model("{WEIGHTS}")` returns it in eval mode. It
  takes float images in [0, 1] of shape (N, 3, 32, 32); the normalisation (mean {meta['mean']}, std
  {meta['std']}) is inside. Classes, in the order of the logits: {', '.join(meta['classes'])}.
- `{WEIGHTS}`: the trained weights, a state dict (`torch.load(path, weights_only=True)`).
- `{TRAIN}`: trains the design again with its recipe (below), from scratch: no pretrained weights, no extra data.
  It does each setting with ResNet Studio's math: the same data order, augmentations, learning rates, weight
  averaging and test-time views{"; the whitened stem's frozen filters are computed from the first training images, "
  "as the run's were" if cfg.arch.stem.whiten else ""}.{held_out}
- `{NOTEBOOK}`: the same cells, for Colab or Kaggle.

## Commands

```bash
python -c "from model import load_model, count_parameters; print(count_parameters(load_model()))"
python {TRAIN}                          # CIFAR-10, downloaded by torchvision into ./data; {epochs} epochs
python {TRAIN} --data DIR --epochs 5    # DIR holds train/ and test/, each with a folder per class
python -m core import run.zip --run-dir runs/{run.name}-again   # back in ResNet Studio: curves, evaluation
```

`{TRAIN}` prints `parameters: N` first and `test accuracy: X%` last. It picks the device it finds (CUDA, Apple
`mps`, else the CPU) and the precision it allows: bf16 on Ampere or newer GPUs, fp16 with a gradient scaler on
Volta and Turing (V100, T4), fp32 on older GPUs, `mps` and CPUs. It writes `run.zip` (config, per-epoch metrics,
results and the best epoch's checkpoint) and `trained.pt` (those weights, for `load_model("trained.pt")`).{time_note}
In a notebook, set the environment variables `TRAIN_DATA`, `TRAIN_EPOCHS` and `TRAIN_DEVICE` for the options.

## Design and recipe

| Setting | Value |
| --- | --- |
{rows}
"""


def load_generated_model(folder: Path):
    """model.py of `folder`, imported as a module of its own (it imports torch alone)."""
    spec = importlib.util.spec_from_file_location("exported_model", folder / MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_logits(folder: Path, ckpt) -> float:
    """The largest difference between the exported network's logits and the studio's on random images."""
    from core.data.augment import Normalizer

    ours = build_model(ckpt.spec)
    ours.load_state_dict(ckpt.weights)
    exported = load_generated_model(folder).load_model(str(folder / WEIGHTS))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours.eval()(Normalizer(ckpt.meta["mean"], ckpt.meta["std"])(images))
        got = exported(images.float() / 255)
    return (want - got).abs().max().item()


def export_code(run: Run, out: str | Path, tag: str = "best") -> dict:
    """Write the folder `out` (which must not exist yet) for a finished run; returns what it holds."""
    out = Path(out)
    run.finished()
    if out.exists():
        raise CodeExportError(f"{out} already exists; delete it first or pick another folder")
    ckpt = load_checkpoint(run.checkpoints, tag)
    cfg = run.config()
    epochs = epochs_to_train(run, cfg)
    model_py = model_source(run, ckpt.meta, count(cfg.arch).params)
    train_py = train_source(run, cfg, model_py, epochs)
    with whole_folder(out) as tmp:
        write_atomic(tmp / MODEL, model_py.encode())
        buffer = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in ckpt.weights.items()}, buffer)
        write_atomic(tmp / WEIGHTS, buffer.getvalue())
        difference = check_logits(tmp, ckpt)
        if not difference <= MAX_LOGIT_DIFFERENCE:
            raise CodeExportError(f"the exported model.py gives logits {difference:.3g} away from the run's (more "
                                  f"than {MAX_LOGIT_DIFFERENCE:g}): nothing written. This is a bug; please report it")
        write_atomic(tmp / TRAIN, train_py.encode())
        write_atomic(tmp / NOTEBOOK, (json.dumps(notebook(train_py), indent=1) + "\n").encode())
        write_atomic(tmp / README, readme(run, cfg, ckpt.meta, epochs).encode())
    return {"exported": str(out), "files": sorted(p.name for p in out.iterdir()), "format": "code",
            "params": count(cfg.arch).params, "epochs": epochs, "max_logit_difference": difference,
            "eval_accuracy": ckpt.meta.get("eval_acc")}


def export_code_zip(run: Run, tag: str = "best") -> tuple[bytes, dict]:
    """The folder export_code writes, as a zip under a top folder RUN-code/ (the Runs page's download)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{run.name}-code"
        made = export_code(run, folder, tag)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for file in sorted(folder.iterdir()):
                z.write(file, f"{folder.name}/{file.name}")
    return buffer.getvalue(), made
