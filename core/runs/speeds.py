"""This machine's training devices and how fast each trains, kept on disk so that a page can estimate at once.

A probe (`python -m core machine`, which the Train page starts in the background) asks torch for the
devices and times a few training steps of a reference design on each device that has no figure yet.
A run reports its own images/s at the end of every epoch, and that figure replaces its device's.
A speed is kept as MACs per second (images/s × the design's MACs per image), so that one figure
estimates any design: images/s ≈ MACs per second ÷ the design's MACs per image.

Each run's speed is also kept with its design, batch and precision ("runs"), so that an estimate agrees with the
run it cites: the design a run trained, at its batch and precision, is given that run's measured images/s, exactly.
Any other design is estimated from the kept run (or probe) nearest to it in cost, scaled by a cost of MACs plus
memory traffic (activations, weighted as the kept runs' speeds show); small networks use a device less well than
their MACs say, which MACs alone miss. Each estimate says where its figure came from and whether it is measured.

    <cache>/machine.json   {"devices": {"cuda:0": "NVIDIA H100", "cpu": "CPU"}, "found": time,
                            "cpu": {"cpu", "vector_isa", "int8_kernels", "onednn_isa", "aten_capability", ...},
                            "speeds": {"cpu": {"macs_per_s", "images_per_s", "name", "source", "when"}},
                            "runs": {"cpu": [{"run", "name", "design", "batch_size", "precision", "macs",
                                              "activations", "images_per_s", "when"}, ...]}}
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.data.sources import image_counts
from core.design.budget import count
from core.design.config import RunConfig
from core.design.presets import preset_spec
from core.design.spec import ArchSpec
from core.files import PROJECT_DIR, FileError, cache_dir, is_locked, locked, read_object, write_json
from core.processes import start_detached
from core.units import macs_text


REFERENCE = "resnet20"             # the design a probe times: small, so a probe takes seconds even on a CPU


EVAL_COST = 1 / 3  # an evaluated image costs a forward pass: about a third of a training step's work


KEPT_RUNS = 40     # the latest runs' speeds kept per device: enough designs to fit the cost model to


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
    if "runs" in kept:
        kept["runs"] = {device: [entry for entry in entries if usable_run(entry)]
                        for device, entries in kept["runs"].items() if isinstance(entries, list)}
    if kept != machine:
        damaged_machine(f"{machine_path()}: parts of it are of the wrong shape")
    return kept


MACHINE_SHAPE = {"devices": dict, "speeds": dict, "cpu": dict, "runs": dict}
_said: set[str] = set()


def usable_speed(figure) -> bool:
    return isinstance(figure, dict) and isinstance(figure.get("macs_per_s"), (int, float)) and \
        figure["macs_per_s"] > 0 and isinstance(figure.get("when"), (int, float)) and \
        isinstance(figure.get("source"), str)


def usable_run(entry) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("run", "name", "design")) and \
        all(isinstance(entry.get(key), (int, float)) and entry[key] > 0
            for key in ("batch_size", "macs", "activations", "images_per_s", "when"))


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


def record_run_speed(device: str, name: str, images_per_s: float, macs: int, run_name: str,
                     cfg: RunConfig | None = None) -> None:
    """A run's speed replaces its device's figure, unless its design is smaller than the probe's reference:
    a tiny network uses a device too poorly to speak for others (a test net's speed made a seed-sized
    design's epoch look many times longer than it is). With its config, the speed is also kept as this
    design's, at its batch and precision, whatever its size: what the estimate of that very design gives."""
    if macs >= count(preset_spec(REFERENCE)).macs:
        record_speed(device, name, images_per_s, macs, f"run {run_name}")
    if cfg is not None:
        entry = {"run": run_name, "name": name, "design": design_key(cfg.arch), "batch_size": cfg.train.batch_size,
                 "precision": cfg.train.precision, "macs": count(cfg.arch).macs,
                 "activations": activations(cfg.arch), "images_per_s": images_per_s, "when": time.time()}
        update_machine(lambda machine: machine | {"runs": machine.get("runs", {}) | {
            device: kept_runs(machine.get("runs", {}).get(device, []), entry)}})


def kept_runs(entries: list[dict], entry: dict) -> list[dict]:
    """`entry` in place of the same run's and of an older one of the same design, batch and precision; the latest
    KEPT_RUNS."""
    same = (entry["design"], entry["batch_size"], entry["precision"])
    others = [e for e in entries if e["run"] != entry["run"] and (e["design"], e["batch_size"], e["precision"]) != same]
    return (others + [entry])[-KEPT_RUNS:]


def design_key(arch: ArchSpec) -> str:
    """The same for two specs of the same network, whatever their order of keys."""
    return hashlib.sha256(json.dumps(arch.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def activations(arch: ArchSpec) -> int:
    """Feature-map values one image makes in training (the stem's, and each block's two convs and projection):
    the memory traffic that, beside MACs, sets a small network's speed."""
    cost = count(arch)
    blocks = [block for stage in cost.stages for block in stage.blocks]
    return 32 * 32 * arch.stem.channels + sum(
        block.out_size ** 2 * block.out_channels * (3 if block.shortcut else 2) for block in blocks)


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
    measured: bool = False  # the source trained this very design at this batch and precision: its own images/s
    source_macs: int = 0    # MACs per image of the design the source measured (scaled from, unless measured)
    by_traffic: bool = False  # scaled by MACs and memory traffic, not by MACs alone
    same_design: bool = False  # the source trained this design, at another batch or precision


def epoch_seconds(images_per_s: float, train_images: int, eval_images: int) -> float:
    """An epoch's training and evaluation time at a training speed."""
    return (train_images + EVAL_COST * eval_images) / images_per_s


def estimate(arch, device: str, data: str | None, train: dict | None = None) -> Estimate | None:
    """How long an epoch of `arch` on `data` takes on `device`, from the speeds kept for it; None without one.
    A run of this design at `train`'s batch and precision (any, without `train`) gives its own images/s;
    else the kept run or probe nearest in cost is scaled by cost (`cost_weight`)."""
    machine = read_machine()
    name = machine.get("devices", {}).get(device)
    runs = [e for e in machine.get("runs", {}).get(device, []) if e["name"] == name]
    counts = image_counts(data)
    key, macs = design_key(arch), count(arch).macs
    same = [e for e in runs if e["design"] == key and (train is None or (
        e["batch_size"] == train.get("batch_size") and e["precision"] == train.get("precision")))]
    if same:
        run = max(same, key=lambda e: e["when"])
        return Estimate(run["images_per_s"], epoch_seconds(run["images_per_s"], *counts), f"run {run['run']}",
                        run["when"], measured=True, source_macs=macs)
    figure = machine.get("speeds", {}).get(device)
    known = runs + ([] if figure is None or figure.get("name") != name else [device_figure(figure)])
    if not known:
        return None
    weight, design = cost_weight(runs), (macs, activations(arch))
    near = min(known, key=lambda e: (abs(math.log(cost_ratio(e, design, weight))), -e["when"]))
    images_per_s = near["images_per_s"] * cost_ratio(near, design, weight)
    return Estimate(images_per_s, epoch_seconds(images_per_s, *counts), near.get("source") or f"run {near['run']}",
                    near["when"], source_macs=round(near["macs"]), by_traffic=bool(weight and near["activations"]),
                    same_design=near.get("design") == key)


def speed_basis(figure: Estimate, macs: int, source: str) -> str:
    """Where an estimate's figure came from, in words, after `source` ("the speed of run NAME (when)"): measured
    on this very design, or an estimate scaled from another."""
    if figure.measured:
        return f"Measured: {source}, which trained this design at this batch and precision."
    if figure.same_design:
        return (f"An estimate from {source}, which trained this design at another batch or precision: the first run "
                f"at these gives its own.")
    return (f"An estimate from {source}, measured on a design of {macs_text(figure.source_macs)} MACs per image, "
            f"scaled to this one's {macs_text(macs)}" + (" and its memory traffic" if figure.by_traffic else "") +
            ": the first run of this design on this device gives its own.")


def device_figure(figure: dict) -> dict:
    """The device's figure as a kept speed of a design whose activations are not known."""
    macs = figure.get("macs") if isinstance(figure.get("macs"), (int, float)) and figure["macs"] > 0 else \
        count(preset_spec(REFERENCE)).macs
    return {"macs": macs, "activations": None, "images_per_s": figure["macs_per_s"] / macs,
            "source": figure["source"], "when": figure["when"]}


def cost_ratio(entry: dict, design: tuple[int, int], weight: float) -> float:
    """How much cheaper the design (MACs, activations) is than a kept speed's: by MACs and activations, or by MACs
    alone against a figure without its activations."""
    macs, acts = design
    if entry["activations"] is None:
        return entry["macs"] / macs
    return (entry["macs"] + weight * entry["activations"]) / (macs + weight * acts)


def cost_weight(runs: list[dict]) -> float:
    """How many MACs an activation costs on this device, fitted to the kept runs' speeds: seconds per image =
    a × MACs + b × activations, least squares in relative error; b / a. 0 (MACs alone) until two designs that
    differ are kept, or when the fit says nothing sensible (a negative share)."""
    designs = {e["design"]: e for e in sorted(runs, key=lambda e: e["when"])}.values()  # each design's latest
    rows = [(e["macs"] * e["images_per_s"], e["activations"] * e["images_per_s"]) for e in designs]  # ÷ its time
    mm, aa, ma = sum(m * m for m, _ in rows), sum(a * a for _, a in rows), sum(m * a for m, a in rows)
    m1, a1 = sum(m for m, _ in rows), sum(a for _, a in rows)
    det = mm * aa - ma * ma
    if len(rows) < 2 or det <= 1e-9 * mm * aa:
        return 0.0
    per_mac, per_activation = (m1 * aa - a1 * ma) / det, (a1 * mm - m1 * ma) / det
    return per_activation / per_mac if per_mac > 0 and per_activation > 0 else 0.0


def isa_caps_text(cpu: dict) -> str:
    """The ISA caps the probe found set (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), as "NAME=VALUE, ..."; "" without."""
    return ", ".join(f"{k}={v}" for k, v in cpu.get("isa_caps", {}).items())


def kernels_text(cpu: dict | None) -> str | None:
    """Which kernels train and run exports here, in a line: "oneDNN Intel AVX2 · ATen AVX2 · onnxruntime int8
    AVX2 (no VNNI)", from the probe's record of the CPU; None before a probe."""
    if not cpu:
        return None
    caps = isa_caps_text(cpu)
    return (f"{cpu.get('cpu')}: oneDNN {cpu.get('onednn_isa') or 'unknown'} · ATen {cpu.get('aten_capability')} · "
            f"onnxruntime int8 {cpu.get('int8_kernels')}" + (f" (capped by {caps})" if caps else ""))
