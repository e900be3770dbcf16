"""The probe: find this machine's training devices (CUDA GPUs this torch can run, Apple's mps, the CPU) and time a
few training steps of a reference design on each (`python -m core machine`); core.runs.speeds keeps what it finds,
and why a GPU that is there cannot train (core.nn.gpu)."""
from __future__ import annotations

import dataclasses
import time

from core.design.budget import count
from core.design.config import RunConfig
from core.design.presets import preset_spec
from core.files import FileLock, cache_dir
from core.runs.speeds import REFERENCE, probe_lock_path, read_machine, record_speed, update_machine


PROBE_BATCH = {"cpu": 32, "cuda": 256, "mps": 128}


PROBE_SECONDS = 2.0                # timed, after the warm-up steps


def find_devices() -> tuple[dict[str, str], list[str]]:
    """The devices that can train here, by torch's names, with what they are; and a line for each GPU that is
    there but cannot (a driver or a wheel that does not fit it), naming the fix."""
    import torch

    from core.nn.gpu import arch_problem, driver_problem, mps_available

    gpus, problems = {}, []
    for i in range(torch.cuda.device_count()):
        if problem := arch_problem(i):
            problems.append(problem)
        else:
            gpus[f"cuda:{i}"] = torch.cuda.get_device_name(i)
    if problem := driver_problem():
        problems.append(problem)
    return gpus | ({"mps": "Apple GPU"} if mps_available() else {}) | {"cpu": "CPU"}, problems


def measure(device: str, arch_preset: str = REFERENCE, seconds: float = PROBE_SECONDS) -> float:
    """Training images/s of a preset's design on `device`, over a few steps on random images, with the
    preset's recipe: what a run of it would do, data loading aside."""
    import torch

    from core.engine.trainer import Trainer
    from core.measure.bench import time_steps

    cfg = RunConfig.from_preset(arch_preset)
    where = torch.device(device)
    batch_size = PROBE_BATCH[where.type]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator).to(where)
    trainer = Trainer(RunConfig(cfg.arch, dataclasses.replace(cfg.train, batch_size=batch_size, compile=False)),
                      where, train_images=images)
    labels = torch.randint(0, cfg.arch.num_classes, (batch_size,), generator=generator).to(where)

    def step() -> int:
        trainer.step(images, labels, cfg.train.lr)
        return batch_size

    return time_steps(step, where, seconds)["images_per_s"]


def probe(again: bool = False, arch_preset: str = REFERENCE, seconds: float = PROBE_SECONDS) -> dict:
    """Find the devices and time each one without a speed (every one, `again`); returns what is known.
    A probe already running elsewhere makes this one return at once."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    lock = FileLock(probe_lock_path())
    if not lock.acquire(wait=0):
        return read_machine()
    try:
        from core.nn import platform  # torch: the probe's own process only
        from core.nn.infer import cpu_bf16_is_native, cpu_has_bf16

        devices, problems = find_devices()
        # which kernels: the same machine is another one under ONEDNN_MAX_CPU_ISA=AVX2; whether it trains in bf16
        # (the Train page offers a preset's variant for CPUs that train in fp32), and if not, whether only a cap
        # keeps it from bf16
        cpu = platform.describe() | {"computes_bf16": cpu_bf16_is_native(), "has_bf16": cpu_has_bf16()}
        update_machine(lambda machine: machine | {"devices": devices, "gpu_problems": problems, "cpu": cpu,
                                                  "found": time.time()})
        speeds = read_machine().get("speeds", {})
        macs = count(preset_spec(arch_preset)).macs
        for device, name in devices.items():
            if again or speeds.get(device, {}).get("name") != name:
                record_speed(device, name, measure(device, arch_preset, seconds), macs, f"timed on {arch_preset}")
        return read_machine()
    finally:
        lock.release()
