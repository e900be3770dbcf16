"""A run's checkpoint as one self-contained ONNX file for devices, fp32 or int8, verified before it is written.

The file takes uint8 RGB images NCHW (N, 3, 32, 32), any batch size; scaling to [0, 1] and the run's
normalisation are inside the graph, so a device feeds camera pixels as they are (core.deploy.onnx_model runs it).
Its metadata holds the class names and the design. Beside it, OUT.onnx.json records how it was verified:
onnxruntime against PyTorch on the whole test split of the run's data (top-1 agreement, largest logit
difference, accuracy), and for int8 the accuracy against fp32 on the same images.

int8 is onnxruntime's static quantization (QDQ, per-channel int8 weights in 7 bits, uint8 activations), calibrated
on training images; an int8 model that loses more accuracy than the user allows is refused, and nothing is
written. The report names the CPU and the int8 kernels it was verified with (VNNI or not): the same file runs
other kernels on another CPU. The 7-bit weights (reduce_range) are what keeps it accurate on both: without VNNI,
onnxruntime's u8s8 kernels add pairs of products in 16 bits, which saturate with 8-bit weights (docs/MACHINES.md:
runs/example lost 0.09 points with VNNI but agreed with fp32 on only 98.35% of test images without; with 7 bits,
0.14 and 0.15 points, 99.29% and 99.50%).
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data.datasets import load_dataset
from core.deploy.onnx_model import INPUT, INPUT_FORMAT, OUTPUT, OnnxModel, report_path
from core.deploy.predict import Classifier
from core.deploy.predict import run_test_data as verification_data  # the run's data, else the built-in slice
from core.errors import StudioError
from core.files import write_atomic, write_json
from core.host import describe
from core.nn.infer import predict_logits
from core.runs.run import Run

MIN_AGREEMENT = 0.995     # fp32 ONNX must pick PyTorch's class on at least this share of the test images
MAX_DROP = 1.0            # default: int8 may lose at most this many accuracy points against fp32
CALIBRATION_IMAGES = 1024  # training images that set int8's activation ranges
SEED = 0                  # which training images calibrate: the same ones every time


class ExportError(StudioError):
    pass


class DropTooLarge(ExportError):
    """int8 lost more accuracy points against fp32 than allowed; `refused` has both numbers, for whoever says
    how to allow more (a flag on the command line, a control on a page)."""

    def __init__(self, message: str, drop: float, allowed: float):
        super().__init__(message)
        self.refused = {"drop": drop, "allowed": allowed}


class DeviceModel(nn.Module):
    """The network with its input handling inside: uint8 images in, logits out."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.model = classifier.model
        self.normalizer = classifier.normalizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(images))


def onnx_fp32(classifier: Classifier, run: Run, tag: str) -> bytes:
    """The checkpoint as an fp32 ONNX model, weights inside, batch size free."""
    model = DeviceModel(classifier).eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=[INPUT],
                                output_names=[OUTPUT], dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    # serialised by hand, not by program.save: the proto holds its weights, so this is one file
    return with_metadata(program.model_proto, classifier, run, tag, "fp32")


def with_metadata(proto, classifier: Classifier, run: Run, tag: str, precision: str) -> bytes:
    meta = {"classes": json.dumps(classifier.classes), "design": json.dumps(classifier.meta["spec"]),
            "input": INPUT_FORMAT, "mean": json.dumps(classifier.meta["mean"]),
            "std": json.dumps(classifier.meta["std"]), "precision": precision, "run": run.name,
            "checkpoint": tag, "generation": classifier.meta["generation"], "exported_by": "ResNet Studio",
            "tta_flip": json.dumps(classifier.own_tta_flip),  # so a device tests as the run did
            "tta_shift": json.dumps(classifier.own_tta_shift)}
    known = classifier.familiarity()
    if known is not None:  # the run's out-of-distribution thresholds, for predictions on a device
        meta["familiarity"] = json.dumps(known.to_json())
    del proto.metadata_props[:]
    for node in proto.graph.node:  # the exporter's notes per node (FX names, stack traces with this machine's
        del node.metadata_props[:]  # paths): no use on a device, and about 7% of an fp32 file
        node.doc_string = ""
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def calibration_images(train_images: torch.Tensor, count: int) -> np.ndarray:
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(SEED))
    return train_images[order[:count]].numpy()


def quantize_int8(fp32: bytes, calibration: np.ndarray, classifier: Classifier, run: Run, tag: str) -> bytes:
    """onnxruntime static quantization: QDQ, int8 weights per output channel in 7 bits (reduce_range: see the
    module's docstring), uint8 activations whose ranges come from running `calibration` (uint8 images) through the
    fp32 model."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 64)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with tempfile.TemporaryDirectory() as folder:
        fp32_path, prepared, int8_path = (Path(folder) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32_path.write_bytes(fp32)
        quant_pre_process(fp32_path, prepared)  # shape inference and folding, as onnxruntime advises
        quantize_static(prepared, int8_path, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        return with_metadata(onnx.load(int8_path), classifier, run, tag, "int8")


def compare(onnx_logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    """How an ONNX model's logits agree with `reference` logits on the same labelled images."""
    return {"accuracy": float((onnx_logits.argmax(1) == labels).mean()),
            "agreement": float((onnx_logits.argmax(1) == reference.argmax(1)).mean()),
            "max_logit_diff": float(np.abs(onnx_logits - reference).max())}


def export_onnx(run: Run, out: str | Path, tag: str = "best", int8: bool = False, data: str | None = None,
                max_drop: float = MAX_DROP, calibration: int = CALIBRATION_IMAGES,
                on_stage: Callable[[str, float], None] = lambda stage, fraction: None) -> dict:
    """Write `out` (and `out`.json, the verification) from the run's checkpoint; return the verification.
    `on_stage(what it does now, share of the stages done)` is told of each stage as it begins."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: name the file OUT.onnx")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; name a file OUT.onnx")
    if not -100 <= max_drop <= 100:
        raise ExportError(f"--max-drop {max_drop}: give accuracy points, -100 to 100")
    if not 1 <= calibration <= 50_000:
        raise ExportError(f"--calibration-images {calibration}: use 1 to 50000")
    start = time.perf_counter()
    stages = iter(range(7 if int8 else 5))
    total = 7 if int8 else 5

    def stage(what: str) -> None:
        on_stage(what, next(stages) / total)

    stage("loading the checkpoint and the test images")
    classifier = Classifier.load(run, tag)
    dataset = load_dataset(data or verification_data(run))
    if list(dataset.classes) != classifier.classes:
        raise ExportError(f"{dataset.source}: its classes differ from the model's; verify on data with the "
                          f"classes {', '.join(classifier.classes)}")
    test, labels = dataset.test.images, dataset.test.labels.numpy()
    stage(f"PyTorch's answers on {len(labels):,} test images")
    reference = predict_logits(classifier.model, test, classifier.normalizer, classifier.device,
                               precision="fp32").numpy()

    stage("exporting the network to ONNX")
    fp32 = onnx_fp32(classifier, run, tag)
    stage(f"checking ONNX fp32 against PyTorch on {len(labels):,} test images")
    fp32_logits = OnnxModel.load(fp32, out.name).logits(test.numpy())
    fp32_check = compare(fp32_logits, reference, labels)
    if fp32_check["agreement"] < MIN_AGREEMENT:
        raise ExportError(f"the ONNX model picks PyTorch's class on only {fp32_check['agreement']:.2%} of "
                          f"{len(labels):,} test images (largest logit difference {fp32_check['max_logit_diff']:.3g}); "
                          f"the export is wrong, so nothing was written")
    report = {"model": str(out), "precision": "fp32", "bytes": len(fp32), "run": run.name, "checkpoint": tag,
              "generation": classifier.meta["generation"], "classes": classifier.classes, "input": INPUT_FORMAT,
              "data": dataset.source, "images": len(labels), "verified_on": describe(),
              "pytorch_accuracy": float((reference.argmax(1) == labels).mean()), **fp32_check}
    model = fp32
    if int8:
        stage(f"calibrating int8 on {min(calibration, len(dataset.train)):,} training images")
        model = quantize_int8(fp32, calibration_images(dataset.train.images, calibration), classifier, run, tag)
        stage(f"checking int8 against fp32 on {len(labels):,} test images")
        int8_logits = OnnxModel.load(model, out.name).logits(test.numpy())
        check = compare(int8_logits, reference, labels)
        drop = (fp32_check["accuracy"] - check["accuracy"]) * 100
        report |= {"precision": "int8", "bytes": len(model), **check, "fp32_bytes": len(fp32),
                   "fp32_accuracy": fp32_check["accuracy"], "accuracy_drop": drop, "max_drop": max_drop,
                   "agreement_with_fp32": float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean()),
                   "calibration_images": min(calibration, len(dataset.train))}
        if drop > max_drop:
            raise DropTooLarge(f"int8 loses {drop:.2f} accuracy points against fp32 ({check['accuracy']:.2%} against "
                               f"{fp32_check['accuracy']:.2%} on {len(labels):,} test images of {dataset.source}), "
                               f"more than the {max_drop:g} allowed; nothing was written", drop, max_drop)
    stage("writing the model")
    report["seconds"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, model)
    write_json(report_path(out), report)
    return report
