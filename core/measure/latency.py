"""Inference latency of a run's network in PyTorch and as exported for devices (ONNX fp32 and int8 in
onnxruntime), side by side in one process on the same images (`python -m core bench-export`)."""
from __future__ import annotations

import os
import statistics
import time

import torch

from core.data.datasets import load_dataset
from core.host import cpu_name


LATENCY_BATCHES = (1, 256)


TURN_SECONDS = 0.5  # each takes turns of this long: call by call, the idle thread pools of one (onnxruntime
                    # and OpenMP both spin a while after a call) slowed the next call of another


def bench_export(run, tag: str = "best", data: str | None = None, seconds: float = 10.0) -> dict:
    """Median CPU latency per call at batch 1 and 256 of PyTorch eager in fp32 (predict's code path held to
    fp32; predict itself takes bf16 where torch reports the CPU does it natively), ONNX fp32 and ONNX int8
    (as `export --format onnx [--int8]` writes them). The three take turns of TURN_SECONDS, so load from other
    processes falls on all of them alike; each batch size gets `seconds` of turns."""
    import onnxruntime

    from core.nn.infer import predict_logits
    from core.deploy.onnx_export import (CALIBRATION_IMAGES, calibration_images, onnx_fp32, quantize_int8,
                                         verification_data)
    from core.deploy.onnx_model import OnnxModel
    from core.deploy.predict import Classifier

    classifier = Classifier.load(run, tag)
    dataset = load_dataset(data or verification_data(run))
    fp32 = onnx_fp32(classifier, run, tag)
    int8 = quantize_int8(fp32, calibration_images(dataset.train.images, CALIBRATION_IMAGES), classifier, run, tag)
    models = {"pytorch": lambda x: predict_logits(classifier.model, torch.from_numpy(x), classifier.normalizer,
                                                   classifier.device, precision="fp32"),
              "onnx_fp32": OnnxModel.load(fp32).logits, "onnx_int8": OnnxModel.load(int8).logits}
    rows = []
    for batch in LATENCY_BATCHES:
        images = dataset.test.images[:batch].numpy()
        times = {name: [] for name in models}
        for call in models.values():  # warm-up: first calls allocate and pick kernels
            call(images)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(times["pytorch"]) < 5:
            for name, call in models.items():
                turn = time.perf_counter()
                while True:
                    tick = time.perf_counter()
                    call(images)
                    times[name].append(time.perf_counter() - tick)
                    if tick - turn >= TURN_SECONDS:
                        break
        ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
        rows.append({"batch": batch, "calls": len(times["pytorch"]),
                     **{f"{name}_ms": v for name, v in ms.items()},
                     **{f"{name}_ms_per_image": v / batch for name, v in ms.items()},
                     "onnx_fp32_speedup": ms["pytorch"] / ms["onnx_fp32"],
                     "onnx_int8_speedup": ms["pytorch"] / ms["onnx_int8"]})
    return {"run": run.name, "checkpoint": tag, "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
            "pytorch_precision": "fp32",
            "bytes": {"onnx_fp32": len(fp32), "onnx_int8": len(int8)}, "latency": rows}
