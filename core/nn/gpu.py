"""Whether this torch can train on this machine's GPUs, before a run tries: the NVIDIA driver against the wheel's
CUDA, each GPU's compute capability against the wheel's arch list (the pinned cu130 wheel dropped sm_60 and sm_70:
P100, V100), and Apple's mps. Each problem is one line that names the fix; core.nn.infer.pick_device and the
training loop fall back to the CPU on "auto" and stop with the line otherwise.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

# the newest CUDA build of torch that still has kernels for Pascal (sm_60) and Volta (sm_70)
OLDER_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
OLDEST_IN_OLDER_CUDA = (5, 0)


def older_wheel_command() -> str:
    return f"pip install torch=={torch.__version__.split('+')[0]} --index-url {OLDER_CUDA_INDEX}"


def sm(capability: tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a wheel built for `arch_list` (torch.cuda.get_arch_list()) runs on a GPU of `capability`: a cubin of
    the same major version and no newer minor, or PTX of no newer version, which the driver compiles."""
    for arch in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not found:
            continue
        built = (int(found.group(2)), int(found.group(3)))
        if found.group(1) == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if found.group(1) == "compute" and built <= capability:
            return True
    return False


def arch_problem(index: int) -> str | None:
    """Why this torch has no kernels for CUDA GPU `index` ("no kernel image is available" at its first step), as
    one line that names the fix; None when it has them."""
    capability = tuple(torch.cuda.get_device_capability(index))
    arch_list = torch.cuda.get_arch_list()
    if not arch_list or has_kernels(capability, arch_list):
        return None
    name = torch.cuda.get_device_name(index)
    gpu = f"GPU {index} ({name}, {sm(capability)}) has no kernels in torch {torch.__version__}, built for " \
          f"{' '.join(arch_list)}"
    if capability >= OLDEST_IN_OLDER_CUDA:
        return f"{gpu}: install the CUDA 12.6 build, which keeps {sm(capability)}: {older_wheel_command()}"
    return f"{gpu}: no current torch supports it; train on the CPU (--device cpu)"


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version when one is installed (Linux), else None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for [\w ]+)?\s+([\d.]+)", text)
    return found.group(1) if found else "unknown"


def gpus_hidden() -> bool:
    """CUDA_VISIBLE_DEVICES set to hide every GPU: no GPU is then what was asked for."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed is not None and (not listed.strip() or listed.strip().startswith("-"))


def driver_problem() -> str | None:
    """Why torch sees no CUDA GPU on a machine with an NVIDIA driver (a driver older than the wheel's CUDA, a
    CPU-only wheel, a broken install), as one line that names the fix; None when torch sees its GPUs or there is
    no driver."""
    if torch.cuda.is_available() or gpus_hidden():
        return None
    version = driver_version()
    if version is None:
        return None
    if torch.version.cuda is None:
        return f"an NVIDIA driver ({version}) is installed but torch {torch.__version__} is built without CUDA: " \
               f"pip install torch=={torch.__version__.split('+')[0]} (the CUDA build)"
    try:
        torch.cuda.init()
        why = "it finds no GPU"
    except (RuntimeError, AssertionError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"the NVIDIA driver {version} cannot run torch {torch.__version__} (built for CUDA {torch.version.cuda}): "
            f"{why}; update the driver, or install the CUDA 12.6 build: {older_wheel_command()}")


def cuda_problem(indices: list[int] | None = None) -> str | None:
    """The first reason the CUDA GPUs `indices` (every visible one when None) cannot train here, or None."""
    if not torch.cuda.is_available():
        return driver_problem()
    for index in range(torch.cuda.device_count()) if indices is None else indices:
        if problem := arch_problem(index):
            return problem
    return None


def mps_available() -> bool:
    """Apple silicon's GPU, as torch's Metal backend sees it."""
    return torch.backends.mps.is_available()
