"""Using a trained run: classify images, explain them with Grad-CAM, evaluate on a test set."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from core.augment import Normalizer
from core.checkpoint import load_model
from core.data import DataError, load_class_folders, load_dataset
from core.errors import StudioError
from core.images import open_image, to_input
from core.infer import evaluate
from core.model import ResNet
from core.runs import Run


@dataclass
class Classifier:
    """A run's checkpoint, ready to predict."""
    model: ResNet
    meta: dict
    normalizer: Normalizer
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @classmethod
    def load(cls, run: Run, tag: str = "best", device: str = "cpu") -> "Classifier":
        run.require()
        model, meta = load_model(run.checkpoints, tag, device)
        return cls(model, meta, Normalizer(meta["mean"], meta["std"], device), torch.device(device))

    def probabilities(self, inputs: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
        """Class probabilities (N, classes) for uint8 inputs (N, 3, 32, 32)."""
        with torch.no_grad():
            x = self.normalizer(inputs.to(self.device))
            logits = self.model(x)
            if tta_flip:
                logits = (logits + self.model(x.flip(3))) / 2
        return logits.softmax(1).cpu()

    def grad_cam(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Grad-CAM (Selvaraju et al. 2017) on the last stage: (N, 32, 32) maps in [0, 1] showing
        where the evidence for class `target` lies."""
        x = self.normalizer(inputs.to(self.device))
        with torch.enable_grad():
            features = self.model.features(x).detach().requires_grad_(True)
            scores = self.model.classify(features).gather(1, target.view(-1, 1).to(self.device)).sum()
            (grads,) = torch.autograd.grad(scores, features)
        weights = grads.mean((2, 3), keepdim=True)
        cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        peak = cam.flatten(1).max(1).values.clamp(min=1e-12).view(-1, 1, 1)
        return (cam / peak).cpu()


@dataclass
class Prediction:
    file: str
    ok: bool
    error: str | None = None
    input: torch.Tensor | None = None          # uint8 (3, 32, 32): what the model sees
    probabilities: dict[str, float] = field(default_factory=dict)
    cam: torch.Tensor | None = None            # (32, 32) in [0, 1]

    def top(self, k: int = 3) -> list[dict]:
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]
        return [{"class": c, "probability": p} for c, p in ranked]

    def to_json(self, k: int = 3) -> dict:
        if not self.ok:
            return {"file": self.file, "ok": False, "error": self.error}
        return {"file": self.file, "ok": True, "top": self.top(k), "probabilities": self.probabilities}


def classify(classifier: Classifier, files: list[tuple[str, bytes | Path]], tta_flip: bool = False,
             grad_cam: bool = False) -> list[Prediction]:
    """Classify every file that decodes; a bad file gets its own error and the rest go on."""
    results: list[Prediction] = []
    good: list[Prediction] = []
    for name, source in files:
        try:
            pred = Prediction(name, True, input=to_input(open_image(source, name)))
            good.append(pred)
        except StudioError as e:
            pred = Prediction(name, False, error=str(e))
        results.append(pred)
    if good:
        inputs = torch.stack([p.input for p in good])
        probs = classifier.probabilities(inputs, tta_flip)
        cams = classifier.grad_cam(inputs, probs.argmax(1)) if grad_cam else [None] * len(good)
        for pred, row, cam in zip(good, probs, cams):
            pred.probabilities = dict(zip(classifier.classes, row.tolist()))
            pred.cam = cam
    return results


# ---- evaluation on a labelled set --------------------------------------------------------------------

@dataclass
class Mistake:
    index: int
    true: str
    predicted: str
    confidence: float
    image: torch.Tensor    # uint8 (3, 32, 32)

    def to_json(self) -> dict:
        return {"index": self.index, "true": self.true, "predicted": self.predicted, "confidence": self.confidence}


@dataclass
class Report:
    data: str
    images: int
    accuracy: float
    classes: list[str]
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    mistakes: list[Mistake]

    def to_json(self) -> dict:
        return {"data": self.data, "images": self.images, "accuracy": self.accuracy, "classes": self.classes,
                "per_class_accuracy": self.per_class_accuracy, "confusion": self.confusion,
                "mistakes": [m.to_json() for m in self.mistakes]}


def load_test_set(data: str, classes: list[str]):
    """CIFAR-10's test split when `data` is a CIFAR-10 copy, else a folder/archive of class folders."""
    try:
        dataset = load_dataset(data)
        return dataset.test, list(dataset.classes), dataset.source
    except DataError:
        if data == "builtin" or not Path(data).exists():
            raise
    split, found = load_class_folders(data, classes)
    return split, list(found), str(Path(data).resolve())


def evaluate_run(classifier: Classifier, data: str, mistakes: int = 20, tta_flip: bool = False) -> Report:
    split, classes, source = load_test_set(data, classifier.classes)
    if classes != classifier.classes:
        raise StudioError(f"{data}: its classes ({', '.join(classes)}) differ from the model's "
                          f"({', '.join(classifier.classes)})")
    result = evaluate(classifier.model, split.images, split.labels, classifier.normalizer, classifier.device,
                      len(classes), tta_flip, precision="fp32")
    probs = result.logits.softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != split.labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:mistakes]
    return Report(source, len(split), result.accuracy, classes,
                  dict(zip(classes, result.per_class_accuracy)), result.confusion.tolist(),
                  [Mistake(int(i), classes[split.labels[i]], classes[predicted[i]], float(confidence[i]),
                           split.images[i]) for i in worst])
