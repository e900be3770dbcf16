"""What the hang fix of issue 18 costs: training images/s with strided 1x1 convolutions computed as oneDNN's
strided kernel ("strided") or as subsample + stride-1 1x1 ("subsampled", core.nn.model.SubsampledConv2d), side
by side in one process, interleaved rounds, median.

    python -m bench.shortcut_speed [--seconds 3] [--rounds 5]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m bench.shortcut_speed --only subsampled

Designs: the search trial that hung on AVX2 (7,614 parameters: its 4->6 shortcut is affected), and resnet20
(16->32 and 32->64 shortcuts: not affected, so the product trains it as before; its "subsampled" row shows what
taking the fix everywhere would cost). fp32, batch 64 (the trial's), the built-in slice. "strided" is left out
under an AVX2 cap (--only subsampled): there it hangs on the affected design.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from core.design.budget import count
from core.design.config import RunConfig
from core.data.datasets import load_dataset
from core.host import describe
from core.measure.bench import bench_engine
from core.nn import model
from core.nn.platform import onednn_isa
from core.search.space import Space

SLICE_SPACE = Space.from_dict(json.loads((Path(__file__).resolve().parent.parent / "docs" / "search-slice.json")
                                         .read_text()))
# docs/search-slice.json's smallest sample, and the trial that hung on AVX2 (stem 4, stages 4/6/10 of 2/1/1
# blocks, kernel 5, SE 8: 7,614 parameters); tests/engine/test_isa.py trains both under the AVX2 cap
SMALLEST = {"stages": 2, "width": 4, "growth": 1.5, "blocks": 1, "kernel_size": 3, "se_ratio": 0, "dropout": 0.0,
            "lr": 0.1, "weight_decay": 5e-4, "batch_size": 64, "augment": ["flip"], "label_smoothing": 0.0,
            "ema_decay": 0.0}
HUNG = SMALLEST | {"stages": 3, "growth": 1.6, "blocks_0": 2, "blocks_1": 1, "blocks_2": 1, "kernel_size": 5,
                   "se_ratio": 8}
MODES = {"strided": 0, "subsampled": model.STRIDED_1X1_MIN_CHANNELS, "subsampled everywhere": 1 << 20}


def designs() -> dict[str, RunConfig]:
    trial = SLICE_SPACE.config(HUNG).replace_train(precision="fp32")
    return {"hung trial (7,614)": trial, "resnet20": RunConfig(RunConfig.from_preset("resnet20").arch, trial.train)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is printed")
    p.add_argument("--only", choices=list(MODES), action="append", help="measure only these modes")
    args = p.parse_args()
    modes = {m: MODES[m] for m in (args.only or MODES)}
    split = load_dataset("builtin").train
    device = torch.device("cpu")
    speeds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, cfg in designs().items():
            for mode, min_channels in modes.items():
                model.STRIDED_1X1_MIN_CHANNELS = min_channels  # read when the model is built
                speed = bench_engine(cfg, split, device, args.seconds)["images_per_s"]
                speeds.setdefault((name, mode), []).append(speed)
    host = describe()
    print(f"{host['cpu']} ({host['vector_isa']}), oneDNN {onednn_isa()}, ATen "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'design':22} {'params':>8} " + " ".join(f"{m:>22}" for m in modes) + "   (train images/s, median)")
    for name, cfg in designs().items():
        cells = [statistics.median(speeds[(name, m)]) for m in modes]
        base = cells[0]
        print(f"{name:22} {count(cfg.arch).params:8,} " +
              " ".join(f"{c:14.0f} ({c / base:4.2f}x)" for c in cells))


if __name__ == "__main__":
    main()
