"""Running a trained model over uint8 images: logits (with test-time augmentation: flip, 1-pixel shifts),
accuracy, confusion matrix."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.data.augment import Normalizer
from core.errors import StudioError
from core.host import isa_caps


def pick_device(request: str) -> torch.device:
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(request)
    except RuntimeError:
        raise StudioError(f"device {request!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StudioError(f"device {request}: no CUDA GPU is visible to torch here; use --device cpu or auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise StudioError(f"device {request}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 ...)")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise StudioError(f"device {request!r}: use auto, cpu, cuda or cuda:N")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """CUDA GPUs, and CPUs with native bf16 (AVX512-BF16/AMX): there bf16 trains ~3x faster than fp32."""
    if device.type == "cuda":
        return True
    # not mkldnn's bf16 check: it says yes on any AVX-512 CPU, where bf16 is emulated and slower than fp32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return native and not bf16_capped_off()


def bf16_capped_off() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA keeps oneDNN below the ISAs with bf16 (AVX2 as a cap: an AVX2 CPU's kernels)."""
    cap = isa_caps().get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return not cap.startswith(("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10"))


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast where asked ("auto": where the hardware does bf16 natively), else nothing."""
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                   batch_size: int = 1000, tta_flip: bool = False, precision: str = "auto",
                   on_batch: Callable[[], None] | None = None, tta_shift: bool = False) -> torch.Tensor:
    """Float32 logits (N, classes) on the CPU for uint8 images (N, 3, 32, 32) on any device; `on_batch()` after
    each batch (a run's heartbeat). `tta_flip`, `tta_shift`: test-time augmentation (`views`)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalizer(images[i:i + batch_size].to(device, non_blocking=True))
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, precision):
            logits = views(model, x, tta_flip, tta_shift)
        out.append(logits.cpu())
        if on_batch is not None:
            on_batch()
    return torch.cat(out) if out else torch.empty(0, 0)


def views(model: torch.nn.Module, x: torch.Tensor, tta_flip: bool, tta_shift: bool) -> torch.Tensor:
    """Float logits of a normalised batch averaged over its test-time views. tta_flip: the image and its mirror
    (CIFAR classes are left-right symmetric). tta_shift: airbench's translations, half the weight on the image,
    a quarter on each of its 1-pixel shifts up-left and down-right (edges reflected); 6 views with the flip."""
    def mirrored(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch).float()
        return (logits + model(batch.flip(3)).float()) / 2 if tta_flip else logits

    logits = mirrored(x)
    if tta_shift:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (mirrored(padded[:, :, :-2, :-2].contiguous(memory_format=torch.channels_last))
                   + mirrored(padded[:, :, 2:, 2:].contiguous(memory_format=torch.channels_last))) / 2
        logits = (logits + shifted) / 2
    return logits


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: torch.Tensor       # (classes, classes): rows true, columns predicted
    logits: torch.Tensor

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()


def evaluate(model, images, labels, normalizer, device, num_classes: int, tta_flip: bool = False,
             precision: str = "auto", on_batch: Callable[[], None] | None = None,
             tta_shift: bool = False) -> Evaluation:
    logits = predict_logits(model, images, normalizer, device, tta_flip=tta_flip, precision=precision,
                            on_batch=on_batch, tta_shift=tta_shift)
    return score(logits, labels, num_classes)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """Loss, accuracy and confusion of logits (N, classes) against labels, whatever computed the logits."""
    labels = labels.cpu()
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    return Evaluation(loss=F.cross_entropy(logits, labels).item(),
                      accuracy=(predicted == labels).float().mean().item(),
                      confusion=confusion.view(num_classes, num_classes), logits=logits)
