"""One image file's prediction and its JSON, the same for a run's checkpoint (core.deploy.predict) and an exported
ONNX model (core.deploy.onnx_model), the words for the test-time augmentation that made it, and whether the image
looks like what the network was trained on (Familiarity).
No torch here: a device classifies with numpy, Pillow and onnxruntime alone.

Out of distribution: every prediction has a score from its logits, the energy (logsumexp, Liu et al. 2020), higher
for images like the training images, and two statistics of the 32x32 input, its contrast and roughness. It is
flagged `ood` when the energy falls below the run's threshold or a statistic outside the range of the run's own
test images, bounds set so that about PASS_SHARE of those test images pass (core.deploy.predict.familiarity sets
them once per checkpoint and keeps them in the run folder; an ONNX export carries them in its metadata).
Why both, measured on runs/example and runs/laptop with each score's threshold at 95% of the built-in slice's test
images passing: the networks are as sure of noise as of photos (the energy of 32x32 noise is above the test images'
median), and no logit score, energy, largest softmax probability or largest logit, flagged more than 2% of it; but
noise is far rougher than nearly every test image and a one-pixel image is flat. For unrelated pictures (icons,
diagrams, logos) the logit scores are close: energy flagged 38% and 22% of 120 (runs/example, runs/laptop), the
largest softmax probability 27% and 27%, one-pixel images 60% and 4% against 40% and 6% (AUROC over all odd
images 0.74 and 0.66 against 0.73 and 0.70). The energy is kept, with no probability scale to saturate.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
from PIL import Image

from core.data.images import open_image
from core.design.table import tta_name
from core.errors import StudioError


SCORE = "energy"       # logsumexp of the logits; the largest softmax probability and logit were measured, not chosen
PASS_SHARE = 0.95      # of the run's own test images, about this share passes all three checks
ENERGY_CUT = 0.04      # the energy threshold: the score this share of the test images falls below
PIXELS_CUT = 0.005     # the contrast floor and roughness ceiling: this share of the test images falls outside each


def ood_scores(logits: np.ndarray, kind: str = SCORE) -> np.ndarray:
    """One score per row of `logits` (N, classes): higher for images like the training images."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(1)
    energy = top + np.log(np.exp(logits - top[:, None]).sum(1))
    return energy if kind == "energy" else np.exp(top - energy)  # max softmax: the top class's probability


def contrast(images: np.ndarray) -> np.ndarray:
    """The spread of each uint8 image's (N, 3, 32, 32) pixel values over its area, the mean of its three colours':
    0 for a flat image (one pixel, enlarged), whatever its colour."""
    return np.asarray(images, dtype=np.float32).std((2, 3)).mean(1)


def roughness(images: np.ndarray) -> np.ndarray:
    """The mean step between neighbouring pixels of each uint8 image (N, 3, 32, 32): noise steps far more than a
    photo does."""
    x = np.asarray(images, dtype=np.float32)
    return (np.abs(np.diff(x, axis=-1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=-2)).mean((1, 2, 3))) / 2


@dataclass(frozen=True)
class Familiarity:
    """A checkpoint's thresholds, set on the `images` test images of `data`: an image is out of distribution when its
    energy is below `threshold` (`threshold_tta` for predictions with flip TTA), its contrast below `contrast_low`
    or its roughness above `roughness_high`. `passed` is the share of those test images that pass."""
    threshold: float
    threshold_tta: float
    contrast_low: float
    roughness_high: float
    images: int
    data: str
    passed: float
    score: str = SCORE

    @classmethod
    def measure(cls, plain_logits: np.ndarray, tta_logits: np.ndarray, images: np.ndarray, data: str) -> Familiarity:
        energy, flat, rough = ood_scores(plain_logits), contrast(images), roughness(images)
        made = cls(float(np.quantile(energy, ENERGY_CUT)), float(np.quantile(ood_scores(tta_logits), ENERGY_CUT)),
                   float(np.quantile(flat, PIXELS_CUT)), float(np.quantile(rough, 1 - PIXELS_CUT)), len(images), data,
                   0.0)
        return replace(made, passed=float(1 - made.flags(energy, images, False).mean()))

    @classmethod
    def from_json(cls, obj: dict) -> Familiarity:
        return cls(**{f.name: obj[f.name] for f in fields(cls)})

    def to_json(self) -> dict:
        return asdict(self)

    def flags(self, energy: np.ndarray, images: np.ndarray, tta_flip: bool) -> np.ndarray:
        """True for each image that is out of distribution."""
        return (energy < (self.threshold_tta if tta_flip else self.threshold)) | \
            (contrast(images) < self.contrast_low) | (roughness(images) > self.roughness_high)

    def judge(self, predictions: list[Prediction], logits: np.ndarray, tta_flip: bool) -> None:
        """Give each prediction its score, the checks it was held to and whether it is out of distribution."""
        images = np.stack([np.asarray(p.input) for p in predictions])
        energy = ood_scores(logits, self.score)
        for prediction, value, flagged, flat, rough in zip(predictions, energy, self.flags(energy, images, tta_flip),
                                                           contrast(images), roughness(images)):
            prediction.score, prediction.ood = float(value), bool(flagged)
            prediction.threshold = self.threshold_tta if tta_flip else self.threshold
            prediction.pixels = {"contrast": float(flat), "contrast_low": self.contrast_low,
                                 "roughness": float(rough), "roughness_high": self.roughness_high}


def unjudged(predictions: list[Prediction], logits: np.ndarray) -> None:
    """Scores without thresholds (a model exported before it had them): `ood` stays None, unknown."""
    for prediction, value in zip(predictions, ood_scores(logits)):
        prediction.score = float(value)


@dataclass
class Prediction:
    file: str
    ok: bool
    error: str | None = None
    input: Any = None                          # uint8 (3, 32, 32): what the model sees (tensor or array)
    probabilities: dict[str, float] = field(default_factory=dict)
    cam: Any = None                            # torch (32, 32) in [0, 1]
    thumbnail: Any = None                      # uint8 (H, W, 3) array: the whole image, small, for people
    size: tuple[int, int] | None = None        # the image's (width, height): of it, the model saw the central square
    score: float | None = None                 # the SCORE of its logits: higher, more like the training images
    threshold: float | None = None             # the run's threshold it was held to (None: the model has none)
    ood: bool | None = None                    # out of distribution (None: not known); see Familiarity
    pixels: dict | None = None                 # its contrast and roughness, and the bounds they were held to

    def top(self, k: int = 3) -> list[dict]:
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]
        return [{"class": c, "probability": p} for c, p in ranked]

    def to_json(self, k: int = 3) -> dict:
        if not self.ok:
            return {"file": self.file, "ok": False, "error": self.error}
        return {"file": self.file, "ok": True, "top": self.top(k), "probabilities": self.probabilities,
                "ood": self.ood, "ood_score": {"kind": SCORE, "value": rounded(self.score),
                                               "threshold": rounded(self.threshold)},
                "pixels": {k: rounded(v) for k, v in (self.pixels or {}).items()} or None}


def rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def read_files(files: list[tuple[str, bytes | Path]], prepare: Callable[[Image.Image], dict]) -> list[Prediction]:
    """A Prediction per file, in order, its probabilities still empty: a file that decodes gets its size and the
    fields `prepare` makes from its image (its `input` at least); a bad file gets its own error and the rest go on."""
    results = []
    for name, source in files:
        try:
            image = open_image(source, name)
            results.append(Prediction(name, True, size=image.size, **prepare(image)))
        except StudioError as e:
            results.append(Prediction(name, False, error=str(e)))
    return results


def tta_words(tta_flip: bool, own: bool | None, tta_shift: bool = False, own_shift: bool = False) -> str:
    """Which test-time augmentation made a result, and whether it is the run's own (`own`, `own_shift`; `own`
    None: unknown)."""
    used = "flip (each image averaged with its mirror)" if (tta_flip, tta_shift) == (True, False) \
        else tta_name(tta_flip, tta_shift)
    if own is None:
        return used
    if (tta_flip, tta_shift) == (own, own_shift):
        return f"{used}: the run's own"
    return f"{used}: asked for; the run's own is {tta_name(own, own_shift)}"


class OwnTta:
    """The test-time augmentation a reader of a run's network uses: the run's own unless a caller asks otherwise
    (`tta_flip` True or False rather than None). A reader gives `own_tta_flip` (None: not recorded, taken as none)
    and `own_tta_shift`."""
    own_tta_flip: bool | None
    own_tta_shift: bool

    def tta(self, tta_flip: bool | None) -> bool:
        """The flip to use when asked for `tta_flip`."""
        return bool(self.own_tta_flip) if tta_flip is None else tta_flip

    def shift(self, tta_flip: bool | None, tta_shift: bool | None = None) -> bool:
        """The 1-pixel shifts to use: as asked, else none where no TTA was asked for (`tta_flip` False), else the
        run's own."""
        if tta_shift is not None:
            return tta_shift
        return False if tta_flip is False else self.own_tta_shift

    def tta_name(self, tta_flip: bool | None, tta_shift: bool | None = None) -> str:
        """tta_name for what `tta_flip` and `tta_shift`, as asked, use."""
        return tta_name(self.tta(tta_flip), self.shift(tta_flip, tta_shift))

    def tta_said(self, tta_flip: bool | None, tta_shift: bool | None = None) -> str:
        """tta_words for what `tta_flip` and `tta_shift`, as asked, use."""
        return tta_words(self.tta(tta_flip), self.own_tta_flip, self.shift(tta_flip, tta_shift), self.own_tta_shift)
