"""What torch runs on here: the ISA oneDNN dispatches to and the one ATen's own kernels use, next to the CPU facts
of core.host. Both can be capped (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), which is how an AVX-512 machine runs
the kernels an AVX2-only CPU would. And the C library's malloc under a CPU training step (keep_freed_memory).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import sys
import tempfile

import torch

from core import host


@functools.cache
def onednn_isa() -> str | None:
    """The ISA oneDNN dispatches to in this process, as its verbose mode names it (e.g. "Intel AVX2",
    "Intel AVX-512 with Intel AMX"); None where torch has no oneDNN or it says nothing. oneDNN has no query for
    it; its verbose mode prints it once, with the C library's printf: so stdout's file descriptor points at a
    temporary file while one tiny convolution runs."""
    if not torch.backends.mkldnn.is_available():
        return None
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                x = torch.ones(2, 8, 4, 4).to(memory_format=torch.channels_last)  # a layout torch gives oneDNN
                torch.nn.functional.conv2d(x, torch.ones(8, 8, 3, 3, requires_grad=True), padding=1).sum().backward()
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).fflush(None)  # what printf still holds goes to the file, not the terminal
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        found = re.search(rb"onednn_verbose(?:,v\d+)?,info,cpu,isa:([^\n]*)", sink.read())
    return found.group(1).decode(errors="replace").strip() if found else None


# glibc's malloc hands a freed block of 128 KB or more back to the kernel (munmap, or trimming the heap's top), and
# the next allocation of it faults every page in again, zeroed. A CPU training step frees and allocates the same
# large activations every step: laptop's spent 0.12-0.15 s of its 0.7 s in the kernel that way on a 2-core Xeon
# (67,000-83,000 page faults a step), and trained 1.12x the images a second with them kept (docs/PERFORMANCE.md).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
TRIM_THRESHOLD = 2**31 - 1             # mallopt takes an int: free space over 2 GB at the heap's top still goes back


@functools.cache
def keep_freed_memory() -> bool:
    """Have the C library keep what this process frees for its next allocations instead of handing it back to the
    kernel: for training processes, whose memory stays near its peak anyway. glibc only (elsewhere, e.g. macOS or
    musl, nothing changes); True where it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    # musl's mallopt does nothing and says 0
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def describe() -> dict:
    """core.host's CPU record with torch's view of it: for `core machine`, run records and benchmarks."""
    return host.describe() | {"onednn_isa": onednn_isa(), "aten_capability": torch.backends.cpu.get_cpu_capability(),
                              "torch": torch.__version__}


def device_name(device: torch.device) -> str:
    """What the device is, as core.runs.speeds names it: the GPU's model, Apple's GPU, or CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple GPU (mps)" if device.type == "mps" else "CPU"


def memory_figures(device: torch.device, error: str = "") -> dict | None:
    """The device's memory in bytes, for an out-of-memory message: total, free, used, and on a GPU what the run
    needed at its peak (its largest use so far plus the allocation that failed, as `error` names it)."""
    try:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            peak = torch.cuda.max_memory_allocated(device) + failed_allocation(error)
            return {"total": total, "free": free, "used": total - free, "peak": peak}
        if device.type == "mps":
            used, total = torch.mps.driver_allocated_memory(), torch.mps.recommended_max_memory()
            return {"total": total, "free": max(total - used, 0), "used": used,
                    "peak": used + failed_allocation(error)}
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        return {"total": total, "free": free, "used": total - free, "peak": None}
    except (RuntimeError, ValueError, OSError, AttributeError):  # a driver that cannot say: the message goes without
        return None


def failed_allocation(error: str) -> int:
    """The bytes of "Tried to allocate 2.00 GiB" in torch's out-of-memory message; 0 when it names none."""
    found = re.search(r"Tried to allocate ([\d.]+) ([KMG]i)?B", error)
    if not found:
        return 0
    return int(float(found.group(1)) * {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, None: 1}[found.group(2)])


def tf32_in_use(device: torch.device) -> dict | None:
    """Whether fp32 convolutions and matrix products really run in TF32: only on sm >= 80, where cuDNN's
    switch is on by torch's default and the matmul one off."""
    if device.type != "cuda":
        return None
    ampere = torch.cuda.get_device_capability(device) >= (8, 0)
    return {"convolutions": ampere and torch.backends.cudnn.allow_tf32,
            "matmul": ampere and torch.backends.cuda.matmul.allow_tf32}


def torch_facts(device: torch.device, precision: dict | None = None) -> dict:
    """torch's side of a run's record (core.runs.record): versions, the device, and what decides its arithmetic
    (`precision`: what a training session used and why, core.nn.infer.amp_policy)."""
    cuda = device.type == "cuda"
    return {"version": torch.__version__, "cuda": torch.version.cuda, "git": torch.version.git_version,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device), "device_name": device_name(device), "gpu": device_name(device) if cuda else None,
            "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
            "aten_capability": torch.backends.cpu.get_cpu_capability(), "onednn_isa": onednn_isa(),
            "threads": torch.get_num_threads(), "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "tf32": tf32_in_use(device)} | ({"precision": precision} if precision else {})
