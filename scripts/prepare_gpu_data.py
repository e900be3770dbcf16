"""Write a CIFAR-10 copy in airbench's format: DEST/cifar10/train.pt and DEST/cifar10/test.pt.

    python -m scripts.prepare_gpu_data [--data PATH] [--dest DIR]

Each file is a torch.save'd dict {'images': uint8 N x 32 x 32 x 3, 'labels': int64 N, 'classes': [names]},
which is what airbench 0.1.8's CifarLoader writes after downloading torchvision's CIFAR-10 and reads back
from ./cifar10/ (its train94 opens 'cifar10/train.pt' and 'cifar10/test.pt' relative to the working
folder). The GPU machine has no internet, so bench/airbench_compare.py writes them from our JPEG copy
there (185 MB: too big to carry; the 19.8 MB archive travels instead, see scripts/prepare_gpu_session.sh).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path


import torch

from core.data.datasets import load_dataset
from core.files import write_atomic


def write_airbench_data(data: str | None, dest: Path) -> Path:
    """DEST/cifar10/{train,test}.pt from the CIFAR-10 copy `data` (None: as training picks it); returns DEST/cifar10."""
    dataset = load_dataset(data)
    folder = dest / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        buffer = io.BytesIO()
        torch.save({"images": split.images.permute(0, 2, 3, 1).contiguous(),  # ours are N x 3 x 32 x 32
                    "labels": split.labels, "classes": list(dataset.classes)}, buffer)
        write_atomic(folder / f"{name}.pt", buffer.getvalue())
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the CIFAR-10 copy (default: $CIFAR10_DATA, ./data, else the built-in slice)")
    p.add_argument("--dest", type=Path, default=Path("."), help="where the cifar10/ folder goes (default: here)")
    args = p.parse_args()
    folder = write_airbench_data(args.data, args.dest)
    for name in ("train", "test"):
        d = torch.load(folder / f"{name}.pt")
        print(f"{folder / name}.pt: images {tuple(d['images'].shape)} {d['images'].dtype}, "
              f"labels {tuple(d['labels'].shape)} {d['labels'].dtype}, {len(d['classes'])} classes")


if __name__ == "__main__":
    main()
