"""Training throughput of this engine against a loop written the way the seed projects train.

Both run side by side in one process, on the same device, model and data, each for a fixed time
after a warm-up; images/s is images over wall time in the timed window (data loading included).
Each rate is also given as a share of the device's peak: a large matrix product in the engine's
compute dtype (bf16 on a GPU), timed in the same call, against the training FLOPs per image
counted from the design (3 forward passes' worth: forward, and backward for inputs and weights).
"""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image

from core.data.augment import MEAN, STD
from core.data.datasets import Split, load_dataset
from core.design.budget import count
from core.design.config import RunConfig
from core.engine.trainer import Trainer
from core.nn.infer import pick_device, policy_for
from core.nn.model import build_model


WARMUP_STEPS = 3


PEAK_SIDE = {"cuda": 8192, "cpu": 2048}  # square matrices big enough to fill each kind of device


class SeedStyleDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR10 as the seeds used it: PIL images through PIL transforms, one at a time."""

    def __init__(self, split: Split):
        self.split = split
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(to_pil_image(self.split.images[i])), int(self.split.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, seconds: float) -> dict:
    """Call step() (which returns its batch size) through a warm-up, then for `seconds`."""
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):  # torch.compile compiles here, cuDNN picks its algorithms
        step()
    sync(device)
    warmup = time.perf_counter() - start
    images, steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += step()
        steps += 1
    sync(device)
    wall = time.perf_counter() - start
    return {"images_per_s": images / wall, "steps": steps, "seconds": wall, "warmup_seconds": warmup}


def compute_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    return policy_for(device, cfg.train.precision).dtype or torch.float32


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> dict:
    """The device's rate on one large matrix product (random data, never zeros), in TFLOP/s: median of
    `repeats` timings, each over several products."""
    side = PEAK_SIDE[device.type]
    a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
    per_timing = 10 if device.type == "cuda" else 1
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(per_timing):
            a @ b
        sync(device)
        times.append((time.perf_counter() - start) / per_timing)
    return {"dtype": str(dtype).removeprefix("torch."), "side": side,
            "tflops": 2 * side ** 3 / statistics.median(times) / 1e12}


def train_flops_per_image(cfg: RunConfig) -> int:
    return 3 * 2 * count(cfg.arch).macs  # forward + backward (about twice the forward), 2 FLOPs per MAC


def share_of_peak(images_per_s: float, flops_per_image: int, peak: dict) -> dict:
    tflops = images_per_s * flops_per_image / 1e12
    return {"train_tflops": tflops, "fraction_of_peak": tflops / peak["tflops"]}


def bench_engine(cfg: RunConfig, split: Split, device: torch.device, seconds: float,
                 cudnn_benchmark: bool = True) -> dict:
    trainer = Trainer(cfg, device, train_images=split.images)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark  # the engine turns it on; off only to measure its gain
    images, labels = split.images.to(device), split.labels.to(device)
    batch, n = cfg.train.batch_size, len(split)
    position = [0]

    def step() -> int:
        start = position[0] % (n - batch + 1)
        trainer.step(images[start:start + batch], labels[start:start + batch], cfg.train.lr)
        position[0] += batch
        return batch

    return time_steps(step, device, seconds)


def bench_seed_style(cfg: RunConfig, split: Split, device: torch.device, seconds: float) -> dict:
    model = build_model(cfg.arch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the benefit of the doubt: the seeds do not say
    workers = min(14, os.cpu_count() or 1)  # seed 000 loaded with 14 workers
    loader = DataLoader(SeedStyleDataset(split), batch_size=128, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)
    batches = iter(())

    def step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(y)

    result = time_steps(step, device, seconds)
    result["num_workers"] = workers
    return result


def engine_settings(cfg: RunConfig, device: torch.device) -> dict:
    t = cfg.train
    return {"batch_size": t.batch_size, "augment": list(t.augment), "compile": t.compile,
            "precision": policy_for(device, t.precision).name, "channels_last": True}


SEED_STYLE_SETTINGS = {"batch_size": 128, "augment": ["crop", "flip"], "precision": "fp32",
                       "loader": "torchvision transforms on PIL images, DataLoader"}


def device_facts(device: torch.device) -> dict:
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def bench(cfg: RunConfig, device_request: str = "auto", seconds: float = 20.0) -> dict:
    device = pick_device(device_request)
    split = load_dataset(cfg.data).train
    peak = matmul_peak(device, compute_dtype(cfg, device))
    flops = train_flops_per_image(cfg)
    engine = bench_engine(cfg, split, device, seconds)
    seed_style = bench_seed_style(cfg, split, device, seconds)
    return device_facts(device) | {
        "params": count(cfg.arch).params, "macs_per_image": count(cfg.arch).macs, "train_flops_per_image": flops,
        "peak": peak,
        "engine": engine | share_of_peak(engine["images_per_s"], flops, peak) | engine_settings(cfg, device),
        "seed_style": seed_style | share_of_peak(seed_style["images_per_s"], flops, peak) | SEED_STYLE_SETTINGS,
        "ratio": engine["images_per_s"] / seed_style["images_per_s"],
    }
