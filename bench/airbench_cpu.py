"""Table "Accuracy at equal time on a CPU", its anchor row (issue 29): airbench94 (airbench==0.1.8), its own code
(net, recipe, loader, Lookahead, TTA), trained on the CPU for N minutes, on our copy of CIFAR-10.

    python -m bench.airbench_cpu $OUT --data ../shared/cifar10/cifar10-jpg.tar.gz --minutes 10
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m bench.airbench_cpu $OUT --data ... --minutes 10
    python -m bench.airbench_cpu $OUT --data ... --epochs 9.9      # as published: a fixed 9.9 epochs
    python -m bench.airbench_cpu /tmp/anchor --dry-run
    python -m bench.equal_time $OUT --device cpu --minutes 10 --recipes laptop,airbench94   # a row of that table

airbench is written for one CUDA GPU. Four things change so that its code runs on a CPU, and nothing else:
- its net comes from its own make_net94 with `.cuda()` and `.half()` made no-ops; the forward runs under CPU
  autocast in the arithmetic our engine picks on this CPU (core.nn.infer.amp_policy: bf16 with AMX or
  AVX512-BF16, else fp32), where airbench runs the whole net in fp16 on a GPU;
- its images load to the CPU, rounded to fp16 as it does, then held in fp32 (fp16 CPU kernels are slow);
- its clock, CUDA events, is the wall clock (torch.cuda.Event and torch.cuda.synchronize are replaced);
- its length: it trains a fixed 9.9 epochs; for --minutes N it gets the epochs that fill N minutes of training
  steps, from two short calibration runs first (not counted). Its schedule (triangle lr, Lookahead ramp) is in
  steps of the whole run, so it stretches over N minutes as ours does under `time_limit`.
Its time is what it prints: whitening init, training steps with their augmentation, and the final TTA.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from bench.airbench_compare import last_row
from bench.common import JPEG_COPY, Report, parser

from core.nn.infer import amp_policy
from core.runs.speeds import kernels_text
from scripts.prepare_gpu_data import write_airbench_data

CALIBRATION_EPOCHS = (0.1, 0.4)  # two lengths: their difference in wall time is what an epoch of training costs
BATCH_SIZE = 1024  # airbench94's
DRY_RUN_BATCH_SIZE = 250  # the built-in slice's 5,000 images make 4 steps an epoch at 1,024
DRY_RUN_EPOCHS = 1  # 39.5% on the slice's 1,000 test images on an AMD EPYC in fp32: it learns
AIRBENCH94 = "airbench94"  # its name as a recipe of bench/equal_time.py


class WallClockEvent:
    """torch.cuda.Event's interface (record, elapsed_time in ms) on the wall clock."""

    def __init__(self, enable_timing: bool = True):
        self.at = None

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        return 1e3 * (end.at - self.at)


def cpu_loader_class():
    """airbench's CifarLoader on the CPU: loads to the CPU, then holds its fp16-rounded images in fp32."""
    from airbench.utils import CifarLoader

    class CpuCifarLoader(CifarLoader):
        def __init__(self, path, *args, gpu="cpu", **kwargs):
            super().__init__(path, *args, gpu=gpu, **kwargs)
            self.images = self.images.float()

    return CpuCifarLoader


def make_cpu_net(dtype: torch.dtype | None):
    """airbench's make_net94 as written, minus its `.cuda()` and `.half()`; the forward under CPU autocast."""
    from airbench.lib_airbench94 import make_net94

    with mock.patch.object(nn.Module, "cuda", lambda m, *a, **k: m), mock.patch.object(nn.Module, "half", lambda m: m):
        net = make_net94()
    forward = net.forward

    def forward_in_amp(x):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return forward(x).float()

    net.forward = forward_in_amp  # an instance attribute: net[0] stays airbench's whitening conv
    return net


@contextlib.contextmanager
def on_the_cpu(workdir: Path):
    """airbench's CUDA-only calls replaced, in `workdir` (it reads ./cifar10/)."""
    import airbench.utils

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with mock.patch.object(airbench.utils, "CifarLoader", cpu_loader_class()), \
                mock.patch.object(torch.cuda, "Event", WallClockEvent), \
                mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None):
            yield
    finally:
        os.chdir(cwd)


def train94_on_cpu(workdir: Path, epochs: float, seed: int, dtype, batch_size: int, verbose: bool = True):
    """One airbench94 run of `epochs`; (its last table row or None, all it printed, wall seconds, training
    images)."""
    from airbench import lib_airbench94

    torch.manual_seed(seed)
    printed = io.StringIO()
    with on_the_cpu(workdir), contextlib.redirect_stdout(printed):
        import airbench.utils

        loader = airbench.utils.CifarLoader("cifar10", train=True, batch_size=batch_size,
                                            aug=lib_airbench94.hyp["aug"], altflip=True)
        start = time.perf_counter()
        lib_airbench94.train94(loader, epochs=epochs, make_net=lambda: make_cpu_net(dtype), verbose=verbose)
        wall = time.perf_counter() - start
    return (last_row(printed.getvalue()) if verbose else None), printed.getvalue(), wall, len(loader.images)


def seconds_trained(printed: str) -> float:
    """airbench's clock at the end of its last epoch (whitening init and training steps; its final TTA comes after)."""
    rows = [line for line in printed.splitlines() if line.startswith("|") and "eval" not in line and "run" not in line]
    return float(rows[-1].strip().strip("|").split("|")[-1])


class Airbench94OnCpu:
    """airbench94 on this CPU, on `data` (written once in airbench's format, in a scratch folder that leaving the
    `with` removes: 177 MB for the whole set): calibrated on first use, then one table row per call of `row`."""

    def __init__(self, data: str, log, batch_size: int = BATCH_SIZE):
        if importlib.util.find_spec("airbench") is None:  # before minutes of data preparation, not after
            raise SystemExit("airbench is not installed here: pip install airbench==0.1.8 (requirements-dev.txt; "
                             "`make setup` installs it)")
        self.log, self.batch_size = log, batch_size
        self.policy = amp_policy("cpu", None, "auto")
        self.workdir = Path(tempfile.mkdtemp(prefix="airbench-cpu-"))
        log(f"airbench data: {write_airbench_data(data, self.workdir)} from {data}; {self.policy.why}")
        self.calibration = None

    def __enter__(self) -> Airbench94OnCpu:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def calibrate(self, seed: int) -> dict:
        runs = [train94_on_cpu(self.workdir, e, seed, self.policy.dtype, self.batch_size, verbose=False)
                for e in CALIBRATION_EPOCHS]
        walls = [wall for _, _, wall, _ in runs]
        epoch_seconds = (walls[1] - walls[0]) / (CALIBRATION_EPOCHS[1] - CALIBRATION_EPOCHS[0])
        self.log(f"calibration: {walls[0]:.1f} s for {CALIBRATION_EPOCHS[0]} epochs, {walls[1]:.1f} s for "
                 f"{CALIBRATION_EPOCHS[1]}: {epoch_seconds:.1f} s an epoch")
        return {"epochs": CALIBRATION_EPOCHS, "wall_seconds": walls, "seconds_per_epoch": epoch_seconds,
                "images_per_s": runs[0][3] / epoch_seconds}

    def row(self, seed: int, minutes: float | None = None, epochs: float | None = None) -> dict:
        """One run, of `epochs` or of the epochs that fill `minutes`; what it printed goes to the log."""
        if epochs is None:
            self.calibration = self.calibration or self.calibrate(seed)
            epochs = round(minutes * 60 / self.calibration["seconds_per_epoch"], 1)
        result, printed, wall, _ = train94_on_cpu(self.workdir, epochs, seed, self.policy.dtype, self.batch_size)
        self.log(printed)
        speed = {"images_per_s_median": self.calibration["images_per_s"]} if self.calibration else {}
        params = sum(p.numel() for p in make_cpu_net(None).parameters() if p.requires_grad)
        return {"who": AIRBENCH94, "minutes": minutes, "epochs": epochs, "seed": seed, "params": params,
                "amp": self.policy.name, "accuracy": result["accuracy"],
                "trained_seconds": seconds_trained(printed), "its_seconds": result["seconds"],
                "wall_seconds": wall} | speed


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--minutes", default="10", help="minutes of training; several, comma-separated: a row each")
    p.add_argument("--epochs", type=float, help="a fixed number of epochs instead (airbench94's own: 9.9)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the timed runs")
    args = p.parse_args()
    if args.dry_run:
        args.data, args.epochs = "builtin", None
    args.device = "cpu"
    report = Report(args.out, "airbench_cpu", args)
    with Airbench94OnCpu(args.data, report.log, DRY_RUN_BATCH_SIZE if args.dry_run else BATCH_SIZE) as anchor:
        report.data |= {"copy": "built-in slice" if args.data == "builtin" else JPEG_COPY, "amp": anchor.policy.name,
                        "amp_why": anchor.policy.why, "threads": torch.get_num_threads(),
                        "batch_size": anchor.batch_size}
        if args.dry_run:  # the minutes DRY_RUN_EPOCHS take on this machine: enough to learn, on a fast or slow one
            anchor.calibration = anchor.calibrate(args.seed)
            args.minutes = str(DRY_RUN_EPOCHS * anchor.calibration["seconds_per_epoch"] / 60)
        for minutes in [None] if args.epochs else [float(m) for m in args.minutes.split(",")]:
            report.add(anchor.row(args.seed, minutes, args.epochs))
            report.data["calibration"] = anchor.calibration
    report.save()

    print(f"\n{'min':>5} {'epochs':>7} {'train s':>8} {'+TTA s':>7} {'tta acc':>8}")
    for row in report.data["rows"]:
        print(f"{row['minutes'] or '-':>5} {row['epochs']:7.1f} {row['trained_seconds']:8.0f} "
              f"{row['its_seconds']:7.0f} {row['accuracy']:8.2%}")
    print(f"data: {report.data['copy']}; {kernels_text(report.data['cpu'])}, {report.data['threads']} threads, "
          f"{anchor.policy.name}")


if __name__ == "__main__":
    main()
