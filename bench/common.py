"""What the GPU benchmark scripts share: their command line, their output folder (one JSON + one log,
written as they go, so a run cut short still leaves its finished rows), and one timed training run.

Each script is one table of docs/PERFORMANCE.md. On the GPU machine the output folder is $OUT; with
--dry-run a script runs end to end on the CPU with tiny settings, to prove it works before device time
is spent on it (its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


import torch

from core.design.config import RunConfig
from core.engine.loop import train
from core.files import write_json
from core.nn.platform import describe
from core.runs.run import create_run

JPEG_COPY = "the JPEG copy of CIFAR-10 (quality 75, 4:2:0)"
DRY_ARCH = {"stages": [{"blocks": 1, "channels": 16}, {"blocks": 1, "channels": 32}], "pool_size": 16}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("out", type=Path, help="folder for the JSON and the log ($OUT on the GPU machine)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA", "builtin"),
                   help="the CIFAR-10 copy (default: $CIFAR10_DATA, else the built-in slice)")
    p.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU: proves the script runs")
    return p


def preset_config(preset: str, args: argparse.Namespace, **changes) -> RunConfig:
    """A preset's design and recipe with `changes`, on --data; a tiny design in a dry run."""
    cfg = RunConfig.from_dict(RunConfig.from_preset(preset).to_dict() | {"data": args.data})
    if args.dry_run:
        cfg = RunConfig.from_dict(cfg.to_dict() | {"arch": DRY_ARCH})
    return cfg.replace_train(**changes)


class Report:
    """`<name>.json` (rewritten after every row) and `<name>.log` in the output folder."""

    def __init__(self, out: Path, name: str, args: argparse.Namespace):
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / f"{name}.json", out / f"{name}.log"
        self.log_path.write_text("")
        self.data = {"script": f"bench/{name}.py", "argv": sys.argv[1:], "dry_run": args.dry_run,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                     "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
                     "cpu": describe(), "cpu_count": os.cpu_count(),
                     "data": args.data, "rows": []}
        self.save()

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()
        self.log(json.dumps(row))

    def save(self) -> None:
        write_json(self.json_path, self.data)


def timed_training(cfg: RunConfig, name: str, device: str, runs_dir: Path | None = None) -> dict:
    """Train `cfg` in this process through the engine (core.engine.loop.train, as a run launched from the app does,
    minus the detaching), in a throwaway runs folder; return what the tables need."""
    runs_dir = runs_dir or Path(tempfile.mkdtemp(prefix="bench-runs-"))
    run = create_run(cfg, name, runs_dir)
    start = time.perf_counter()
    status = train(run, device)
    wall = time.perf_counter() - start
    if status["state"] != "finished":
        raise RuntimeError(f"{name}: {status['state']}: {status.get('error')}\n{run.log_tail()}")
    results = json.loads(run.results_path.read_text())
    evals = [m for m in run.metrics() if m["kind"] == "epoch"]
    speeds = [m["images_per_s"] for m in evals]
    return {"run": str(run.dir), "accuracy": results["accuracy"], "best_acc": results["best_acc"],
            "trained_seconds": evals[-1]["trained"], "wall_seconds": wall, "epochs": evals[-1]["epoch"],
            "images_per_s_median": sorted(speeds)[len(speeds) // 2],
            "curve": [{"trained": m["trained"], "epoch": m["epoch"], "eval_acc": m["eval_acc"]} for m in evals],
            "data": results["data"]}
