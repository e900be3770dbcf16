"""This machine's CPU as the kernels see it: its model, its vector extensions, and the caps a user put on them.

oneDNN (inside torch) and onnxruntime each pick their kernels from the CPU's extensions, so the same model runs
different code on an AVX2 laptop and an AVX-512 server: every measured figure and verified export names them.
The extensions come from CPUID (numpy asks it at import), which an emulator or a VM reports truly; /proc/cpuinfo
adds AVX-VNNI and AMX, but only where it agrees with CPUID (under an emulator it describes the host instead).
No torch here: core.nn.platform adds what torch itself reports (the ISA oneDNN dispatches to).
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numpy as np

ISA_SWITCHES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # caps a user (or CI) sets on torch's kernels


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_features() -> frozenset[str]:
    """The vector extensions this process can use, named as CPUID (through numpy) names them, plus AVX_VNNI
    and AMX_INT8/AMX_BF16 from /proc/cpuinfo where that file describes this CPU."""
    cpuid = {name for name, present in np._core._multiarray_umath.__cpu_features__.items() if present}
    flags = _cpuinfo_flags()
    same_cpu = flags and ("avx512f" in flags) == ("AVX512F" in cpuid) and ("avx2" in flags) == ("AVX2" in cpuid)
    extras = {name.upper() for name in ("avx_vnni", "amx_int8", "amx_bf16") if name in flags} if same_cpu else set()
    return frozenset(cpuid | extras)


def int8_kernels() -> str:
    """The int8 matrix path onnxruntime (MLAS) takes on this CPU. Without VNNI, AVX2's u8 x s8 multiply-add
    (VPMADDUBSW) saturates at 16 bits, so the same int8 file can lose accuracy there that it keeps elsewhere."""
    features = cpu_features()
    if "AMX_INT8" in features:
        return "AMX-INT8"
    if "AVX512VNNI" in features:
        return "AVX512-VNNI"
    if "AVX_VNNI" in features:
        return "AVX-VNNI"
    if "AVX2" in features:
        return "AVX2 (no VNNI)"
    return "SSE"


def vector_isa() -> str:
    """The widest extension in a few words: AVX-512 (with AMX), AVX2, ..."""
    features = cpu_features()
    if "AVX512F" in features:
        return "AVX-512" + (" + AMX" if "AMX_BF16" in features else "")
    for name in ("AVX2", "AVX", "SSE42"):
        if name in features:
            return name.replace("SSE42", "SSE4.2")
    return platform.machine()


def isa_caps() -> dict[str, str]:
    """The ISA switches set in this environment, e.g. {"ONEDNN_MAX_CPU_ISA": "AVX2"}."""
    return {name: os.environ[name] for name in ISA_SWITCHES if os.environ.get(name)}


def describe() -> dict:
    """The CPU in one record: for `core machine`, run records, benchmarks and export reports."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "vector_isa": vector_isa(), "int8_kernels": int8_kernels(),
            "isa_caps": isa_caps()}
