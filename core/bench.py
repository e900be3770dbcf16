"""Training throughput of this engine against a loop written the way the seed projects train.

Both run side by side in one process, on the same device, model and data, each for a fixed time
after a warm-up; images/s is images over wall time in the timed window (data loading included).
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image

from core.augment import MEAN, STD
from core.budget import count
from core.config import RunConfig
from core.data import Split, load_dataset
from core.infer import bf16_is_fast
from core.model import build_model
from core.train import Trainer, pick_device

WARMUP_STEPS = 3


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
    for _ in range(WARMUP_STEPS):
        step()
    sync(device)
    images, steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += step()
        steps += 1
    sync(device)
    wall = time.perf_counter() - start
    return {"images_per_s": images / wall, "steps": steps, "seconds": wall}


def bench_engine(cfg: RunConfig, split: Split, device: torch.device, seconds: float) -> dict:
    trainer = Trainer(cfg, device)
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
    workers = min(4, os.cpu_count() or 1)
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


def bench(cfg: RunConfig, device_request: str = "auto", seconds: float = 20.0) -> dict:
    device = pick_device(device_request)
    split = load_dataset(cfg.data).train
    engine = bench_engine(cfg, split, device, seconds)
    seed_style = bench_seed_style(cfg, split, device, seconds)
    t = cfg.train
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "params": count(cfg.arch).params,
        "engine": engine | {"batch_size": t.batch_size, "augment": list(t.augment), "compile": t.compile,
                            "precision": "bf16" if t.precision == "bf16" or
                            (t.precision == "auto" and bf16_is_fast(device)) else "fp32",
                            "channels_last": True},
        "seed_style": seed_style | {"batch_size": 128, "augment": ["crop", "flip"], "precision": "fp32",
                                    "loader": "torchvision transforms on PIL images, DataLoader"},
        "ratio": engine["images_per_s"] / seed_style["images_per_s"],
    }
