"""Running a trained model over uint8 images: logits (with test-time augmentation: flip, 1-pixel shifts),
accuracy, confusion matrix; which device that runs on (`pick_device`) and in which arithmetic (`amp_policy`:
autocast dtype and GradScaler, for training too)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from core.data.augment import Normalizer
from core.errors import StudioError
from core.host import isa_caps
from core.nn.gpu import arch_problem, cuda_problem, driver_problem, mps_available


def auto_device() -> tuple[str, str | None]:
    """What "auto" trains on: a CUDA GPU this torch can run, else Apple's GPU, else the CPU; with the line that
    says why a GPU that is there is not used (core.nn.gpu), or None."""
    problem = cuda_problem()
    if torch.cuda.is_available() and problem is None:
        return "cuda", None
    return ("mps" if mps_available() else "cpu"), problem


def pick_device(request: str) -> torch.device:
    if request == "auto":
        request = auto_device()[0]
    try:
        device = torch.device(request)
    except RuntimeError:
        raise StudioError(f"device {request!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StudioError(driver_problem() or
                              f"device {request}: no CUDA GPU is visible to torch here; use --device cpu or auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise StudioError(f"device {request}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 ...)")
        if problem := arch_problem(index):
            raise StudioError(problem)
        device = torch.device("cuda", index)
    elif device.type == "mps":
        if not mps_available():
            raise StudioError(f"device {request}: Apple's GPU (mps) is not available here: it needs a Mac with "
                              f"Apple silicon and macOS 12.3 or later; use --device cpu or auto")
        device = torch.device("mps")
    elif device.type != "cpu":
        raise StudioError(f"device {request!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


class AmpPolicy(NamedTuple):
    """The arithmetic of a run: autocast to `dtype` (None: plain fp32), with a GradScaler or not, and why."""
    dtype: torch.dtype | None
    scaler: bool
    why: str

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def amp_policy(kind: str, capability: tuple[int, int] | None, setting: str) -> AmpPolicy:
    """What `setting` (auto, fp32, bf16, fp16) means on a device of `kind` (cuda, mps, cpu) with CUDA compute
    `capability` (e.g. (7, 5); None elsewhere). "auto": bf16 where the hardware computes it (sm >= 80, CPUs with
    AVX512-BF16/AMX), fp16 with a GradScaler where it has fp16 tensor cores but no bf16 (sm 7.x) and on Apple's
    mps, else fp32. A CPU's bf16 is read from this host. fp16 always takes a GradScaler: its gradients underflow
    without one."""
    if setting == "fp32":
        return AmpPolicy(None, False, "fp32 as the config asks")
    if setting == "fp16":
        return AmpPolicy(torch.float16, True, "fp16 as the config asks, with a GradScaler against underflow")
    if setting == "bf16":
        slow = kind == "cuda" and capability is not None and capability < (8, 0)
        return AmpPolicy(torch.bfloat16, False, "bf16 as the config asks" + (
            f"; sm_{capability[0]}{capability[1]} has no bf16 convolutions: they fall back to slow kernels, "
            f"fp16 or auto is faster there" if slow else ""))
    if kind == "cuda":
        if capability is None:
            raise ValueError("amp_policy: a CUDA device needs its compute capability")
        sm = f"sm_{capability[0]}{capability[1]}"
        if capability >= (8, 0):
            return AmpPolicy(torch.bfloat16, False, f"auto: {sm} computes bf16 natively (cuDNN, tensor cores)")
        if capability >= (7, 0):
            return AmpPolicy(torch.float16, True, f"auto: {sm} has fp16 tensor cores but sends bf16 convolutions "
                                                  f"to slow fallback kernels; fp16 needs a GradScaler")
        return AmpPolicy(None, False, f"auto: {sm} has no tensor cores; fp32 is its fastest safe arithmetic")
    if kind == "mps":
        return AmpPolicy(torch.float16, True, "auto: Apple's GPU computes fp16 natively; fp16 needs a GradScaler")
    if cpu_bf16_is_native():
        return AmpPolicy(torch.bfloat16, False, "auto: this CPU computes bf16 natively (AVX512-BF16/AMX)")
    why = "oneDNN is capped below its bf16 ISAs (ONEDNN_MAX_CPU_ISA)" if cpu_has_bf16() else \
        "this CPU has no native bf16 (no AVX512-BF16/AMX): emulated bf16 is slower than fp32"
    return AmpPolicy(None, False, f"auto: {why}")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX on this host. Not mkldnn's bf16 check: it says yes on any AVX-512 CPU, where bf16 is
    emulated and slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_bf16_is_native() -> bool:
    """Whether bf16 trains faster than fp32 on this CPU (about 3x on AMX, 1.7x on AVX512-BF16 alone): it has the
    ISA and oneDNN may use it."""
    return cpu_has_bf16() and not bf16_capped_off()


def bf16_capped_off() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA keeps oneDNN below the ISAs with bf16 (AVX2 as a cap: an AVX2 CPU's kernels)."""
    cap = isa_caps().get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return not cap.startswith(("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10"))


def capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability, e.g. (7, 5); None for other devices."""
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def policy_for(device: torch.device, precision: str) -> AmpPolicy:
    return amp_policy(device.type, capability(device), precision)


def autocast_for(device: torch.device, precision: str):
    """The autocast of `precision` on `device` (amp_policy), or nothing for fp32."""
    dtype = policy_for(device, precision).dtype
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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
