"""One image file's prediction and its JSON, the same for a run's checkpoint (core.deploy.predict) and an exported
ONNX model (core.deploy.onnx_model), and the words for the test-time augmentation that made it. No torch here: a
device classifies with numpy, Pillow and onnxruntime alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from PIL import Image

from core.data.images import open_image
from core.errors import StudioError


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

    def top(self, k: int = 3) -> list[dict]:
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]
        return [{"class": c, "probability": p} for c, p in ranked]

    def to_json(self, k: int = 3) -> dict:
        if not self.ok:
            return {"file": self.file, "ok": False, "error": self.error}
        return {"file": self.file, "ok": True, "top": self.top(k), "probabilities": self.probabilities}


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
    def name(flip: bool, shift: bool) -> str:
        return {(False, False): "none", (True, False): "flip", (False, True): "1-pixel shifts",
                (True, True): "flip and 1-pixel shifts (6 views)"}[flip, shift]

    used = "flip (each image averaged with its mirror)" if (tta_flip, tta_shift) == (True, False) \
        else name(tta_flip, tta_shift)
    if own is None:
        return used
    if (tta_flip, tta_shift) == (own, own_shift):
        return f"{used}: the run's own"
    return f"{used}: asked for; the run's own is {name(own, own_shift)}"
