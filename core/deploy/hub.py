"""A finished run as a folder ready for the Hugging Face Hub (`python -m core export RUN OUT --format hub`), and
such a folder back as a run (`python -m core import OUT --run-dir runs/NAME`).

    OUT/
        model.safetensors   the checkpoint's weights in fp32, under this studio's names (core.nn.model)
        config.json         the design, classes, normalisation and input format; the recipe and data it came from
        README.md           the model card: YAML metadata (model-index: dataset, metric, value) and what a
                            reader needs: intended use, limitations, how it was trained, how to use it, its record
        model.onnx          with --onnx: the verified ONNX file (core.deploy.onnx_export), and model.onnx.json

`huggingface_hub.upload_folder` uploads it as it is; nothing here touches the network.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from core.data.augment import MEAN, STD
from core.deploy.importer import WeightsError, import_tensors, read_file
from core.deploy.onnx_model import INPUT_FORMAT
from core.design.budget import count
from core.design.config import RunConfig
from core.design.spec import SpecError
from core.design.table import hyperparameters
from core.errors import StudioError
from core.files import read_json, whole_folder, write_atomic, write_json
from core.nn.checkpoint import load_checkpoint
from core.runs.record import data_copy, read_record, summary_lines
from core.runs.run import Run

WEIGHTS, CONFIG, CARD, ONNX = "model.safetensors", "config.json", "README.md", "model.onnx"
MODEL_TYPE = "resnet-studio-cifar-resnet"


class HubError(StudioError):
    pass


def hub_config(run: Run, meta: dict, cfg: RunConfig) -> dict:
    classes = meta["classes"]
    return {"model_type": MODEL_TYPE, "library": "ResNet Studio (python -m core import)",
            "architecture": meta["spec"], "num_classes": len(classes), "classes": classes,
            "id2label": {str(i): name for i, name in enumerate(classes)},
            "label2id": {name: i for i, name in enumerate(classes)},
            "image_size": 32, "input": "RGB 32x32; pixels / 255, then (x - mean) / std per channel",
            "mean": meta["mean"], "std": meta["std"], "params": count(cfg.arch).params, "macs": count(cfg.arch).macs,
            "run": run.name, "epoch": meta.get("epoch"), "eval_split": meta.get("eval_split"),
            "eval_accuracy": meta.get("eval_acc"), "data": meta.get("data"), "preset": cfg.preset,
            "train": cfg.train.to_dict(), "imported_from": meta.get("imported_from")}


def model_card(run: Run, config: dict, cfg: RunConfig, onnx_report: dict | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData  # only an export for the Hub needs it

    accuracy, split = config["eval_accuracy"], config["eval_split"] or "test"
    record = read_record(run.record_path)
    data = data_copy(record, config["data"])
    results = [] if accuracy is None else [EvalResult(
        task_type="image-classification", task_name="Image Classification", dataset_type="cifar10",
        dataset_name=data, dataset_split=split, metric_type="accuracy", metric_name=f"{split.capitalize()} accuracy",
        metric_value=round(accuracy, 4))]
    card = ModelCardData(model_name=run.name, library_name="pytorch", pipeline_tag="image-classification",
                         datasets=["cifar10"], metrics=["accuracy"], eval_results=results or None,
                         tags=["image-classification", "cifar10", "resnet", "safetensors", "resnet-studio"])
    table = "\n".join(f"| {name} | {value} |" for name, value in
                      hyperparameters(cfg, imported=bool(config["imported_from"])).items())
    record_rows = "\n".join(f"| {name} | `{value}` |" for name, value in summary_lines(record))
    measured = (f"**{accuracy:.2%}** top-1 accuracy on the {split} split of {data} "
                f"(checkpoint of epoch {config['epoch']})." if accuracy is not None else
                "Not measured here: the weights were imported; `python -m core evaluate` measures them.")
    onnx = "" if onnx_report is None else (
        f"\n`{ONNX}` is the same network for devices (onnxruntime): input {INPUT_FORMAT}, normalisation inside. "
        f"It picks the same class as PyTorch on {onnx_report['agreement']:.2%} of {onnx_report['images']:,} test "
        f"images ({onnx_report['accuracy']:.2%} accuracy; {onnx_report['bytes'] / 1e6:.2f} MB).\n")
    return f"""---
{card.to_yaml()}
---

# {run.name}

A residual network for 32×32 CIFAR-10 images, designed and trained with ResNet Studio under a budget of
5,000,000 parameters: {config['params']:,} parameters, {config['macs'] / 1e6:.1f} M multiply-accumulates per image.

## Results

{measured}

## Intended use

Classifying small photos into its {len(config['classes'])} classes ({', '.join(config['classes'])}): teaching, comparing
architectures and recipes, and a baseline for small devices. It is not meant for decisions about people, for images
outside these classes (it always answers one of them), or for images unlike CIFAR-10's (large, not centred).

## Limitations

- Trained and measured on {data}. A JPEG copy is a lossy re-encoding: accuracies on it are lower than on the original
  lossless CIFAR-10, and the network has learnt its artefacts. Compare only figures measured on the same copy.
- Inputs must be 32×32 RGB, normalised with the `mean` and `std` in `{CONFIG}`.
- 32×32 pixels: a photo is shrunk to that before it is classified, and loses most of its detail.

## Training procedure

| Setting | Value |
| --- | --- |
{table}

## How to use

```bash
python -m core import path/to/this/folder --run-dir runs/{run.name}   # a run of ResNet Studio again
python -m core predict --run runs/{run.name} photo.jpg
```

Without ResNet Studio: build the network that `architecture` in `{CONFIG}` describes (stem, stages of basic
blocks, pooling, linear head; `core/nn/model.py`) and load `{WEIGHTS}` into it with `safetensors.torch.load_file`.
{onnx}
## Reproducibility record

| Fact | Value |
| --- | --- |
{record_rows}
"""


def export_hub(run: Run, out: str | Path, tag: str = "best", onnx: bool = False, data: str | None = None) -> dict:
    """Write the folder `out` (which must not exist yet) for a finished run; returns what it holds."""
    out = Path(out)
    run.finished()
    if out.exists():
        raise HubError(f"{out} already exists; delete it first or pick another folder")
    ckpt = load_checkpoint(run.checkpoints, tag)
    cfg = run.config()
    config = hub_config(run, ckpt.meta, cfg)
    with whole_folder(out) as tmp:
        weights = {k: v.contiguous() for k, v in ckpt.weights.items()}
        write_atomic(tmp / WEIGHTS, save_safetensors(weights, metadata={"format": "pt"}))
        onnx_report = None
        if onnx:
            from core.deploy.onnx_export import export_onnx

            onnx_report = export_onnx(run, tmp / ONNX, tag, data=data)
        write_json(tmp / CONFIG, config)
        write_atomic(tmp / CARD, model_card(run, config, cfg, onnx_report).encode())
    return {"exported": str(out), "files": sorted(p.name for p in out.iterdir()), "format": "hub",
            "eval_accuracy": config["eval_accuracy"]}


def is_hub_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).exists() and (path / CONFIG).exists()


def import_hub(folder: str | Path, run_dir: str | Path) -> Run:
    """A folder written by export_hub, as a new finished run."""
    folder = Path(folder)
    if not is_hub_folder(folder):
        raise HubError(f"{folder}: not a model folder; it needs {WEIGHTS} and {CONFIG} "
                       f"(as `python -m core export RUN OUT --format hub` writes them)")
    config = read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise HubError(f"{folder / CONFIG}: not a ResNet Studio model (model_type {MODEL_TYPE!r} expected)")
    try:
        cfg = RunConfig.from_dict({"arch": config["architecture"], "train": config.get("train") or {},
                                   "preset": config.get("preset")})
        classes = tuple(config["classes"])
        mean, std = tuple(config.get("mean", MEAN)), tuple(config.get("std", STD))
    except (KeyError, TypeError, SpecError) as e:
        raise HubError(f"{folder / CONFIG}: its design or classes cannot be read ({e})") from None
    data = read_file(folder / WEIGHTS, str(folder / WEIGHTS))
    try:
        tensors = load_safetensors(data)  # safetensors: no code runs on load
    except (SafetensorError, ValueError) as e:
        raise WeightsError(f"{folder / WEIGHTS}: not a readable safetensors file ({e})") from None
    return import_tensors(tensors, hashlib.sha256(data).hexdigest(), str(folder), cfg, run_dir, mean, std, classes)

