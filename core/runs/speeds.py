"""This machine's training devices and how fast each trains, kept on disk so that a page can estimate at once.

A probe (`python -m core machine`, which the Train page starts in the background) asks torch for the
devices and times a few training steps of a reference design on each device that has no figure yet.
A run reports its own images/s at the end of every epoch, and that figure replaces its device's.
A speed is kept as MACs per second (images/s × the design's MACs per image), so that one figure
estimates any design: images/s ≈ MACs per second ÷ the design's MACs per image. Rough, since small
networks use a device less well than large ones; each estimate says where its figure came from.

    <cache>/machine.json   {"devices": {"cuda:0": "NVIDIA H100", "cpu": "CPU"}, "found": time,
                            "cpu": {"cpu", "vector_isa", "int8_kernels", "onednn_isa", "aten_capability", ...},
                            "speeds": {"cpu": {"macs_per_s", "images_per_s", "name", "source", "when"}}}
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.data.sources import image_counts
from core.design.budget import count
from core.design.presets import preset_spec
from core.files import PROJECT_DIR, FileError, cache_dir, is_locked, locked, read_object, write_json
from core.processes import start_detached


REFERENCE = "resnet20"             # the design a probe times: small, so a probe takes seconds even on a CPU


EVAL_COST = 1 / 3  # an evaluated image costs a forward pass: about a third of a training step's work


def machine_path() -> Path:
    return cache_dir() / "machine.json"


def probe_lock_path() -> Path:
    return cache_dir() / ".machine.probe.lock"


def read_machine() -> dict:
    """What is known of this machine; {} before the first probe. A damaged file reads as {}, and a part of it of
    the wrong shape as not known (the next probe or run measures it again), said once on stderr."""
    try:
        machine = read_object(machine_path(), default={})
    except FileError as e:
        return damaged_machine(str(e))
    kept = {key: value for key, value in machine.items() if isinstance(value, MACHINE_SHAPE.get(key, object))}
    if "speeds" in kept:
        kept["speeds"] = {device: figure for device, figure in kept["speeds"].items() if usable_speed(figure)}
    if kept != machine:
        damaged_machine(f"{machine_path()}: parts of it are of the wrong shape")
    return kept


MACHINE_SHAPE = {"devices": dict, "speeds": dict, "cpu": dict}
_said: set[str] = set()


def usable_speed(figure) -> bool:
    return isinstance(figure, dict) and isinstance(figure.get("macs_per_s"), (int, float)) and \
        figure["macs_per_s"] > 0 and isinstance(figure.get("when"), (int, float)) and \
        isinstance(figure.get("source"), str)


def damaged_machine(problem: str) -> dict:
    if problem not in _said:
        _said.add(problem)
        print(f"{problem}: what it held is not used; `python -m core machine --again` measures the devices again",
              file=sys.stderr)
    return {}


def known_devices() -> dict[str, str] | None:
    """Torch device names (cuda:0, ..., cpu) with what they are, as the last probe found them; None before."""
    return read_machine().get("devices")


def device_label(device: str, devices: dict[str, str] | None) -> str:
    name = (devices or {}).get(device, "")
    if device == "mps":
        return "Apple GPU (mps)"
    return f"GPU {device.split(':')[1]} · {name}" if device.startswith("cuda:") else "CPU"


def record_speed(device: str, name: str, images_per_s: float, macs: int, source: str) -> None:
    """Keep `device`'s speed, measured at `images_per_s` on a design of `macs` MACs per image."""
    figure = {"macs_per_s": images_per_s * macs, "images_per_s": images_per_s, "macs": macs, "name": name,
              "source": source, "when": time.time()}
    update_machine(lambda machine: machine | {"speeds": machine.get("speeds", {}) | {device: figure}})


def record_run_speed(device: str, name: str, images_per_s: float, macs: int, run_name: str) -> None:
    """A run's speed replaces its device's figure, unless its design is smaller than the probe's reference:
    a tiny network uses a device too poorly to speak for others (a test net's speed made a seed-sized
    design's epoch look many times longer than it is)."""
    if macs >= count(preset_spec(REFERENCE)).macs:
        record_speed(device, name, images_per_s, macs, f"run {run_name}")


def update_machine(change) -> None:
    """Read, change and write machine.json under its lock: probes and runs write it at the same time."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with locked(machine_path()):
        write_json(machine_path(), change(read_machine()))


# ---- asking (no torch) ----------------------------------------------------------------------------


def probe_running() -> bool:
    return is_locked(probe_lock_path())  # a probe holds it while it looks (core.measure.probe)


def start_probe(again: bool = False) -> None:
    """Run a probe in a process of its own, its output in <cache>/machine.log; at once."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    start_detached([sys.executable, "-m", "core", "machine", *(["--again"] if again else [])],
                   cache_dir() / "machine.log", cwd=PROJECT_DIR)


@dataclass(frozen=True)
class Estimate:
    images_per_s: float
    epoch_s: float       # training through the train images and evaluating the test images once
    source: str          # where the speed came from, in words: "timed on resnet20" or "run NAME"
    when: float          # when it was measured


def epoch_seconds(images_per_s: float, train_images: int, eval_images: int) -> float:
    """An epoch's training and evaluation time at a training speed."""
    return (train_images + EVAL_COST * eval_images) / images_per_s


def estimate(arch, device: str, data: str | None) -> Estimate | None:
    """How long an epoch of `arch` on `data` takes on `device`, from the speed kept for it; None without one."""
    machine = read_machine()
    figure = machine.get("speeds", {}).get(device)
    if figure is None or figure.get("name") != machine.get("devices", {}).get(device):
        return None
    images_per_s = figure["macs_per_s"] / count(arch).macs
    return Estimate(images_per_s, epoch_seconds(images_per_s, *image_counts(data)), figure["source"],
                    figure["when"])


def kernels_text(cpu: dict | None) -> str | None:
    """Which kernels train and run exports here, in a line: "oneDNN Intel AVX2 · ATen AVX2 · onnxruntime int8
    AVX2 (no VNNI)", from the probe's record of the CPU; None before a probe."""
    if not cpu:
        return None
    caps = ", ".join(f"{k}={v}" for k, v in cpu.get("isa_caps", {}).items())
    return (f"{cpu.get('cpu')}: oneDNN {cpu.get('onednn_isa') or 'unknown'} · ATen {cpu.get('aten_capability')} · "
            f"onnxruntime int8 {cpu.get('int8_kernels')}" + (f" (capped by {caps})" if caps else ""))
