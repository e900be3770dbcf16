"""An exported model (`python -m core export RUN --format onnx`) at work without the studio: onnxruntime,
numpy and Pillow, no torch, which is all a device needs.

The model takes uint8 RGB images, NCHW (N, 3, 32, 32), values 0-255, any batch size; it scales and
normalises them itself and returns logits (N, classes). Its metadata holds the class names, the design, the
run's test-time augmentation (`tta_flip`, `tta_shift`), which predictions use unless asked otherwise, and its
out-of-distribution thresholds (`familiarity`, see core.deploy.prediction).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.images import to_pixels
from core.deploy.prediction import Familiarity, OwnTta, Prediction, read_files, unjudged
from core.errors import StudioError

INPUT = "images"
OUTPUT = "logits"
INPUT_FORMAT = "uint8 RGB, NCHW (N, 3, 32, 32), values 0-255; scaling and normalisation are inside the model"
BATCH = 1000  # images per onnxruntime call when many are classified at once


def exported_file(run, precision: str) -> Path:
    """Where the app keeps a run's exported model (fp32 or int8): runs/NAME/exports/NAME-PRECISION.onnx."""
    return run.export_file(f"{run.name}-{precision}.onnx")


def report_path(model: Path) -> Path:
    """The verification written beside an exported model: OUT.onnx.json."""
    return model.with_name(model.name + ".json")


class OnnxModelError(StudioError):
    pass


@dataclass
class OnnxModel(OwnTta):
    session: object        # onnxruntime.InferenceSession
    meta: dict[str, str]   # the model's metadata_props: classes and design as JSON, input, run, ...

    @property
    def classes(self) -> list[str]:
        return json.loads(self.meta["classes"])

    def flag(self, key: str) -> bool | None:
        """A true/false of the metadata; None where it is missing or not one (an older or hand-edited file)."""
        try:
            value = json.loads(self.meta[key])
        except (KeyError, ValueError):
            return None
        return value if isinstance(value, bool) else None

    @property
    def own_tta_flip(self) -> bool | None:
        """The run's own test-time augmentation; None from an export made before exports recorded it."""
        return self.flag("tta_flip")

    @property
    def own_tta_shift(self) -> bool:
        """Whether the run tested with 1-pixel shifts too; not from an export made before exports recorded it."""
        return bool(self.flag("tta_shift"))

    def familiarity(self) -> Familiarity | None:
        """The run's thresholds as exported; None for a model exported before they were."""
        try:
            return Familiarity.from_json(json.loads(self.meta["familiarity"]))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def load(cls, source: str | Path | bytes, name: str = "") -> OnnxModel:
        """An exported model from its file or bytes; `name` is how errors call it."""
        import onnxruntime as ort

        name = name or str(source if not isinstance(source, bytes) else "the model")
        if not isinstance(source, bytes):
            if not Path(source).is_file():
                raise OnnxModelError(f"{name}: no such file")
            source = str(source)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's notes would go to the user's terminal
        try:
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for every way a file is bad
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxModelError(f"{name}: not a model onnxruntime can load ({first}); export one with "
                                 f"`python -m core export RUN --format onnx OUT.onnx`") from None
        meta = session.get_modelmeta().custom_metadata_map
        inputs = session.get_inputs()
        if "classes" not in meta or [i.name for i in inputs] != [INPUT]:
            raise OnnxModelError(f"{name}: an ONNX model, but not one exported by ResNet Studio (it needs one "
                                 f"input '{INPUT}' and class names in its metadata)")
        return cls(session, dict(meta))

    def logits(self, images: np.ndarray, tta_flip: bool = False, tta_shift: bool = False) -> np.ndarray:
        """float32 logits (N, classes) for uint8 images (N, 3, 32, 32), in batches of BATCH; with the test-time
        views core.nn.infer.views makes."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if tta_shift:  # the views' shifts, on pixels: reflecting edges commutes with the model's normalisation
            padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
            shifted = (self.logits(padded[..., :-2, :-2], tta_flip) + self.logits(padded[..., 2:, 2:], tta_flip)) / 2
            return (self.logits(images, tta_flip) + shifted) / 2
        out = [self.session.run([OUTPUT], {INPUT: images[i:i + BATCH]})[0] for i in range(0, len(images), BATCH)]
        logits = np.concatenate(out) if out else np.empty((0, len(self.classes)), np.float32)
        if tta_flip:  # as core.nn.infer does it: the mean of the image's and its mirror's logits
            logits = (logits + self.logits(images[..., ::-1])) / 2
        return logits

    def probabilities(self, images: np.ndarray, tta_flip: bool = False, tta_shift: bool = False) -> np.ndarray:
        return softmax(self.logits(images, tta_flip, tta_shift))


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def classify(model: OnnxModel, files: list[tuple[str, bytes | Path]], tta_flip: bool | None = None) -> list[Prediction]:
    """As core.deploy.predict.classify, with an exported model: its run's own test-time augmentation unless
    `tta_flip` says otherwise."""
    results = read_files(files, lambda image: {"input": to_pixels(image)})
    good = [pred for pred in results if pred.ok]
    if good:
        tta_flip, tta_shift = model.tta(tta_flip), model.shift(tta_flip)
        logits = model.logits(np.stack([pred.input for pred in good]), tta_flip, tta_shift)
        for pred, row in zip(good, softmax(logits)):
            pred.probabilities = dict(zip(model.classes, row.tolist()))
        known = model.familiarity()
        if known is None:
            unjudged(good, logits)
        else:
            known.judge(good, logits, tta_flip)
    return results
