"""A submission from an unlabelled test set (core.data.testsets): each image's class as a run's checkpoint
predicts it, in the set's order, written as the course's Kaggle CSV: the header `ID,Labels`, one row per image,
the label an integer 0-9 in CIFAR-10's class order. The run's own test-time augmentation unless asked otherwise.

`Submission.rows` holds everything known per image (its ID, label, class, probability, and `ood`: whether it looks
unlike the run's training images, core.deploy.prediction's Familiarity); the CSV takes the
columns of CSV_COLUMNS from them, so a field added per image reaches the page and the JSON without changing the
file graders read.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from core.data.datasets import CLASSES
from core.data.testsets import UnlabelledSet
from core.deploy.predict import Classifier
from core.deploy.prediction import ood_scores
from core.nn.infer import predict_logits
from core.errors import StudioError
from core.files import write_atomic

CSV_COLUMNS = ("ID", "Labels")


class SubmissionError(StudioError):
    pass


@dataclass
class Submission:
    test_set: UnlabelledSet
    probabilities: torch.Tensor   # (N, 10) in CIFAR-10's class order
    tta_flip: bool
    tta: str                      # which test-time augmentation, in tta_words's words
    ood: list[bool | None]        # per image: unlike the run's training images; None where the run has no thresholds

    @property
    def labels(self) -> list[int]:
        return self.probabilities.argmax(1).tolist()

    def rows(self) -> list[dict]:
        """One dict per image, in the test set's order."""
        confidence = self.probabilities.max(1).values.tolist()
        return [{"ID": image_id, "Labels": label, "class": CLASSES[label], "probability": p, "ood": ood}
                for image_id, label, p, ood in zip(self.test_set.ids, self.labels, confidence, self.ood)]

    def csv(self) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([row[column] for column in CSV_COLUMNS] for row in self.rows())
        return out.getvalue().encode()

    def histogram(self) -> dict[str, int]:
        """How many images each class got, every class in CIFAR-10's order."""
        counts = Counter(self.labels)
        return {name: counts[label] for label, name in enumerate(CLASSES)}

    def summary(self) -> dict:
        return {"count": len(self.test_set), "histogram": self.histogram(), "tta_flip": self.tta_flip,
                "tta": self.tta, "sha256": self.test_set.sha256,
                "layout": self.test_set.layout,
                "ood": None if None in self.ood else sum(self.ood)}  # how many look unlike the training images


def predict_test_set(classifier: Classifier, test_set: UnlabelledSet, tta_flip: bool | None = None,
                     tta_shift: bool | None = None) -> Submission:
    """The classifier's prediction for every image; refused when its classes are not CIFAR-10's (a label is a
    CIFAR-10 class index)."""
    foreign = [name for name in classifier.classes if name not in CLASSES]
    if foreign:
        raise SubmissionError(f"the run's classes include {', '.join(foreign)}, which are not CIFAR-10's: a "
                              f"submission labels images 0-9 in CIFAR-10's order ({', '.join(CLASSES)})")
    flip, shift = classifier.tta(tta_flip), classifier.shift(tta_flip, tta_shift)
    logits = predict_logits(classifier.model, torch.from_numpy(test_set.images), classifier.normalizer,
                            classifier.device, tta_flip=flip, tta_shift=shift).float().cpu()
    in_cifar_order = torch.zeros(len(test_set), len(CLASSES))
    in_cifar_order[:, [CLASSES.index(name) for name in classifier.classes]] = logits.softmax(1)
    known = classifier.familiarity()
    ood = [None] * len(test_set) if known is None else \
        known.flags(ood_scores(logits.numpy(), known.score), test_set.images, flip).tolist()
    return Submission(test_set, in_cifar_order, flip, classifier.tta_said(tta_flip, tta_shift), ood)


def write_submission(submission: Submission, out: Path) -> None:
    """The CSV at `out`, atomically: a reader sees the old file or the whole new one."""
    check_destination(out)
    write_atomic(out, submission.csv())


def check_destination(out: Path) -> None:
    """Refuse an `out` the CSV cannot go to, before any work."""
    if not out.parent.is_dir():
        raise SubmissionError(f"{out}: its folder {out.parent} does not exist; create it or give another --out")
    if out.is_dir():
        raise SubmissionError(f"{out}: a folder; give a file name such as {out / 'submission.csv'}")
