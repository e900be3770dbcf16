"""Using a trained run: classify images, explain them with Grad-CAM, evaluate on a test set.

Every reader of a run tests as the run did: with its own test-time augmentation (the `tta_flip` its
checkpoint records) unless a caller asks otherwise (`tta_flip` True or False rather than None), and says which
it used (core.deploy.prediction.tta_words)."""
from __future__ import annotations

import fcntl
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from core.data.augment import Normalizer
from core.data.datasets import Split, load_class_folders, load_dataset
from core.data.images import to_pixels
from core.data.sources import BUILTIN, DataError
from core.deploy.prediction import Prediction, read_files
from core.errors import StudioError
from core.nn.checkpoint import load_model
from core.nn.infer import pick_device, predict_logits, score
from core.nn.model import ResNet
from core.nn.visual import thumbnail
from core.runs.run import Run


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

    @property
    def own_tta_flip(self) -> bool:
        """Whether the run tested with flip TTA; a run imported without that record did not."""
        return bool(self.meta.get("tta_flip", False))

    @property
    def own_tta_shift(self) -> bool:
        """Whether the run tested with 1-pixel shifts too (airbench's 6 views with the flip)."""
        return bool(self.meta.get("tta_shift", False))

    def tta(self, tta_flip: bool | None) -> bool:
        """The flip TTA to use when asked for `tta_flip`: None means the run's own."""
        return self.own_tta_flip if tta_flip is None else tta_flip

    def shift(self, tta_flip: bool | None, tta_shift: bool | None = None) -> bool:
        """The shift TTA to use: as asked, else none where no TTA was asked for (`tta_flip` False), else the
        run's own."""
        if tta_shift is not None:
            return tta_shift
        return False if tta_flip is False else self.own_tta_shift

    @classmethod
    def load(cls, run: Run, tag: str = "best", device: str = "cpu") -> Classifier:
        run.require()
        device = pick_device(device)
        model, meta = load_model(run.checkpoints, tag, device)
        return cls(model, meta, Normalizer(meta["mean"], meta["std"], device), device)

    def probabilities(self, inputs: torch.Tensor, tta_flip: bool | None = None,
                      tta_shift: bool | None = None) -> torch.Tensor:
        """Class probabilities (N, classes) for uint8 inputs (N, 3, 32, 32), computed exactly as
        evaluation computes them."""
        return predict_logits(self.model, inputs, self.normalizer, self.device, tta_flip=self.tta(tta_flip),
                              tta_shift=self.shift(tta_flip, tta_shift)).softmax(1)

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


def classify(classifier: Classifier, files: list[tuple[str, bytes | Path]], tta_flip: bool | None = None,
             grad_cam: bool = False) -> list[Prediction]:
    """Classify every file that decodes; a bad file gets its own error and the rest go on."""
    results = read_files(files, lambda image: {"input": torch.from_numpy(to_pixels(image)),
                                               "thumbnail": thumbnail(image)})
    good = [pred for pred in results if pred.ok]
    if good:
        inputs = torch.stack([p.input for p in good])
        probs = classifier.probabilities(inputs, tta_flip)
        cams = classifier.grad_cam(inputs, probs.argmax(1)) if grad_cam else [None] * len(good)
        for pred, row, cam in zip(good, probs, cams):
            pred.probabilities = dict(zip(classifier.classes, row.tolist()))
            pred.cam = cam
    return results


def sample_files(per_class: int = 1) -> list[tuple[str, bytes]]:
    """The first `per_class` test images of each class in the built-in slice, as PNG files named after
    their class: something to classify before having images of one's own."""
    dataset = load_dataset(BUILTIN)
    test, files = dataset.test, []
    for label, name in enumerate(dataset.classes):
        for index in (test.labels == label).nonzero().flatten()[:per_class].tolist():
            png = io.BytesIO()
            Image.fromarray(test.images[index].permute(1, 2, 0).numpy()).save(png, format="PNG")
            files.append((f"{name}-{index}.png", png.getvalue()))
    return files


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
    tta_flip: bool = False  # whether each image's prediction was averaged with its mirror's
    tta_shift: bool = False  # and with the image shifted a pixel (6 views with the flip)

    def to_json(self) -> dict:
        return {"data": self.data, "images": self.images, "accuracy": self.accuracy, "tta_flip": self.tta_flip,
                "tta_shift": self.tta_shift,
                "classes": self.classes,
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


def labelled_test_set(data: str, classes: list[str]) -> tuple[Split, str]:
    """load_test_set, refused when its classes are not the model's `classes`."""
    split, found, source = load_test_set(data, classes)
    if found != classes:
        raise StudioError(f"{data}: its classes ({', '.join(found)}) differ from the model's ({', '.join(classes)})")
    return split, source


def evaluate_run(classifier: Classifier, data: str, mistakes: int = 20, tta_flip: bool | None = None,
                 tta_shift: bool | None = None) -> Report:
    return evaluate_split(classifier, *labelled_test_set(data, classifier.classes), mistakes, tta_flip, tta_shift)


def evaluate_onnx(model, data: str, mistakes: int = 20, tta_flip: bool = False) -> Report:
    """evaluate_run for an exported model (core.deploy.onnx_model.OnnxModel): onnxruntime computes the logits.
    Reading the test set still takes torch (core.data.datasets decodes it into tensors)."""
    split, source = labelled_test_set(data, model.classes)
    logits = torch.from_numpy(model.logits(split.images.numpy(), tta_flip))
    return report(logits, split, model.classes, source, mistakes, tta_flip)


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
UPLOAD_DIR = Path(tempfile.gettempdir()) / "resnet-studio-upload"


def evaluate_archive(classifier: Classifier, name: str, data: bytes, mistakes: int = 20,
                     tta_flip: bool | None = None) -> Report:
    """Evaluate on an archive of class folders given as bytes (an upload called `name`); errors name it.

    The bytes are written to one fixed path, under a lock, for load_class_folders: its decoding cache
    keeps one entry per path, so uploads share one entry instead of adding one each.
    """
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise DataError(f"{name}: not an archive; upload a .zip, .tar.gz, .tgz or .tar of class folders, "
                        f"<class>/<image>")
    UPLOAD_DIR.mkdir(exist_ok=True)
    path = (UPLOAD_DIR / f"upload{suffix}").resolve()  # as load_class_folders names it in errors
    with open(UPLOAD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        path.write_bytes(data)
        try:
            split, _ = load_class_folders(path, classifier.classes)
        except DataError as e:
            raise DataError(str(e).replace(str(path), name)) from None
        finally:
            path.unlink(missing_ok=True)
    return evaluate_split(classifier, split, f"{name} (uploaded class folders)", mistakes, tta_flip)


def evaluate_split(classifier: Classifier, split: Split, source: str, mistakes: int = 20,
                   tta_flip: bool | None = None, tta_shift: bool | None = None) -> Report:
    """Accuracy, per-class accuracy, confusion and the `mistakes` most confident mistakes on labelled images
    whose labels index the classifier's classes."""
    tta_flip, tta_shift = classifier.tta(tta_flip), classifier.shift(tta_flip, tta_shift)
    logits = predict_logits(classifier.model, split.images, classifier.normalizer, classifier.device,
                            tta_flip=tta_flip, tta_shift=tta_shift)
    return report(logits, split, classifier.classes, source, mistakes, tta_flip, tta_shift)


def report(logits: torch.Tensor, split: Split, classes: list[str], source: str, mistakes: int,
           tta_flip: bool, tta_shift: bool = False) -> Report:
    """The Report of a model's logits on a labelled split, whatever computed them."""
    result = score(logits, split.labels, len(classes))
    probs = result.logits.softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != split.labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:mistakes]
    return Report(source, len(split), result.accuracy, classes,
                  dict(zip(classes, result.per_class_accuracy)), result.confusion.tolist(),
                  [Mistake(int(i), classes[split.labels[i]], classes[predicted[i]], float(confidence[i]),
                           split.images[i]) for i in worst], tta_flip, tta_shift)
