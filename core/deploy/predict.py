"""Using a trained run: classify images, say which look unlike its training images (core.deploy.prediction's
Familiarity, measured here once per checkpoint on the run's test split and kept in its folder), explain them with
Grad-CAM, evaluate on a test set.

Every reader of a run tests as the run did: with its own test-time augmentation (the `tta_flip` and `tta_shift` its
checkpoint records) unless a caller asks otherwise (`tta_flip` True or False rather than None), and says which
it used (core.deploy.prediction.tta_words)."""
from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from core.data.augment import Normalizer
from core.data.datasets import Split, load_class_folders, load_dataset
from core.data.images import to_pixels
from core.data.sources import BUILTIN, DataError, test_set_name
from core.deploy.prediction import Familiarity, OwnTta, Prediction, read_files, unjudged
from core.errors import StudioError
from core.files import FileLock, read_json
from core.nn.checkpoint import load_model
from core.nn.infer import pick_device, predict_logits, score
from core.nn.model import ResNet
from core.nn.visual import thumbnail
from core.runs.run import Run


@dataclass
class Classifier(OwnTta):
    """A run's checkpoint, ready to predict."""
    model: ResNet
    meta: dict
    normalizer: Normalizer
    device: torch.device
    run: Run | None = None
    tag: str = "best"
    _familiarity: list = field(default_factory=list, repr=False)  # [Familiarity | None] once known

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

    @classmethod
    def load(cls, run: Run, tag: str = "best", device: str = "cpu") -> Classifier:
        run.require()
        device = pick_device(device)
        model, meta = load_model(run.checkpoints, tag, device)
        return cls(model, meta, Normalizer(meta["mean"], meta["std"], device), device, run, tag)

    def familiarity(self) -> Familiarity | None:
        """The checkpoint's out-of-distribution thresholds (see `familiarity`); None for a model without a run."""
        if not self._familiarity:
            self._familiarity.append(familiarity(self) if self.run is not None else None)
        return self._familiarity[0]

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
        tta_flip, tta_shift = classifier.tta(tta_flip), classifier.shift(tta_flip)
        logits = predict_logits(classifier.model, inputs, classifier.normalizer, classifier.device, tta_flip=tta_flip,
                                tta_shift=tta_shift)
        probs = logits.softmax(1)
        cams = classifier.grad_cam(inputs, probs.argmax(1)) if grad_cam else [None] * len(good)
        for pred, row, cam in zip(good, probs, cams):
            pred.probabilities = dict(zip(classifier.classes, row.tolist()))
            pred.cam = cam
        known = classifier.familiarity()
        if known is None:
            unjudged(good, logits.numpy())
        else:
            known.judge(good, logits.numpy(), tta_flip)
    return results


def familiar_text(prediction: Prediction) -> str:
    """Whether an image looks like the network's training images, in a table's words."""
    if not prediction.ok:
        return ""
    return {True: "no: unlike its training images", False: "yes", None: "not known"}[prediction.ood]


def prediction_rows(results: list[Prediction], classes: list[str]) -> list[dict]:
    """One row per file for a table: its top two classes, whether it looks like the training images, its OOD score
    and every class's probability, or why it could not be read. A file that could not be read has empty text cells
    and None numbers."""
    rows = []
    for result in results:
        row = {"File": result.file, "Top class": "", "Probability": None, "Second class": "",
               "Looks like its training images": familiar_text(result), "Second probability": None,
               "OOD score": result.score, **dict.fromkeys(classes)}
        if result.ok:
            first, second = result.top(2)
            row |= {"Top class": first["class"], "Probability": first["probability"],
                    "Second class": second["class"], "Second probability": second["probability"]}
            row |= result.probabilities
        rows.append(row | {"Error": result.error or ""})
    return rows


def predictions_csv(results: list[Prediction], classes: list[str], run_name: str, tag: str, tta: str) -> str:
    """prediction_rows as CSV, with what made them in every row: the run, its checkpoint, its test-time views
    (tta_name)."""
    out = io.StringIO()
    made_by = {"Run": run_name, "Checkpoint": tag, "TTA": tta}
    rows = [row | made_by for row in prediction_rows(results, classes)]
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else list(made_by), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def run_test_data(run: Run) -> str:
    """The data a run's checkpoints are measured on: its own when it is on this machine, else the built-in slice."""
    data = run.config().data
    return data if data in (None, BUILTIN) or Path(data).expanduser().exists() else BUILTIN


def familiarity(classifier: Classifier, data: str | None = None) -> Familiarity | None:
    """The classifier's checkpoint's thresholds, from the run's familiarity.json when they were measured for this
    save (its generation), else measured now on the run's test split (run_test_data; the built-in slice when that
    cannot be read) and kept there. None when no test split with the model's classes is at hand. With `data`,
    measured anew on its test split."""
    run, tag, generation = classifier.run, classifier.tag, classifier.meta.get("generation")
    try:
        kept = read_json(run.familiarity_path, default={}).get(tag) or {}
    except (StudioError, AttributeError):  # a damaged cache: measured again, written anew
        run.forget_familiarity()
        kept = {}
    if kept.get("generation") == generation and generation is not None and data is None:
        return Familiarity.from_json(kept)
    for candidate in dict.fromkeys([data or run_test_data(run), BUILTIN]):
        try:
            split, source = labelled_test_set(candidate, classifier.classes)
            break
        except StudioError:
            continue
    else:
        return None
    plain, tta = (predict_logits(classifier.model, split.images, classifier.normalizer, classifier.device,
                                 tta_flip=flip).numpy() for flip in (False, True))
    measured = Familiarity.measure(plain, tta, split.images.numpy(), test_set_name(source, len(split.images)))
    run.keep_familiarity(tag, measured.to_json() | {"generation": generation})
    return measured


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


def evaluate_onnx(model, data: str, mistakes: int = 20, tta_flip: bool | None = None,
                  tta_shift: bool | None = None) -> Report:
    """evaluate_run for an exported model (core.deploy.onnx_model.OnnxModel): onnxruntime computes the logits.
    Reading the test set still takes torch (core.data.datasets decodes it into tensors)."""
    split, source = labelled_test_set(data, model.classes)
    tta_flip, tta_shift = model.tta(tta_flip), model.shift(tta_flip, tta_shift)
    logits = torch.from_numpy(model.logits(split.images.numpy(), tta_flip, tta_shift))
    return report(logits, split, model.classes, source, mistakes, tta_flip, tta_shift)


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
UPLOAD_DIR = Path(tempfile.gettempdir()) / "resnet-studio-upload"


def evaluate_archive(classifier: Classifier, name: str, data: bytes, mistakes: int = 20,
                     tta_flip: bool | None = None, tta_shift: bool | None = None) -> Report:
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
    with FileLock(UPLOAD_DIR / ".lock"):
        path.write_bytes(data)
        try:
            split, _ = load_class_folders(path, classifier.classes)
        except DataError as e:
            raise DataError(str(e).replace(str(path), name)) from None
        finally:
            path.unlink(missing_ok=True)
    return evaluate_split(classifier, split, f"{name} (uploaded class folders)", mistakes, tta_flip, tta_shift)


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
