"""Training images/s of one run as 1 process and as 2 processes (torchrun, gloo) on this CPU.

    .venv/bin/python -m bench.distributed_cpu [--preset resnet20] [--batch-size 128] [--repeats 3]

Both train the same preset with the same global batch for one epoch of the built-in slice (5,000 JPEG-copy
images), alternately, `--repeats` times each, in runs under a temporary folder. Prints the median
training images/s of each (the epoch line of metrics.jsonl: training only, no evaluation) and their ratio.
One process uses torch's default threads (all cores); torchrun gives each of 2 processes one thread.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from core.host import cpu_name

ROOT = Path(__file__).resolve().parent.parent


def images_per_s(folder: Path, name: str, args, processes: int) -> float:
    run_dir = folder / name
    subprocess.run([sys.executable, "-m", "core", "train", "--preset", args.preset, "--run-dir", str(run_dir),
                    "--epochs", "1", "--batch-size", str(args.batch_size), "--data", "builtin", "--device", "cpu",
                    "--nproc-per-node", str(processes)], cwd=ROOT, check=True, capture_output=True,
                   env=os.environ | {"CUDA_VISIBLE_DEVICES": "", "RESNET_STUDIO_LOCKS": str(folder / "locks")})
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(m["images_per_s"] for m in lines if m["kind"] == "epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch of both")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for processes in (1, 2):
                rates[processes].append(images_per_s(Path(tmp), f"p{processes}-{i}", args, processes))
                print(f"  {processes} process(es), try {i + 1}: {rates[processes][-1]:,.0f} images/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}; {args.preset}, global "
          f"batch {args.batch_size}, built-in slice (JPEG copy), median of {args.repeats}:")
    print(f"  1 process:   {one:8,.0f} images/s")
    print(f"  2 processes: {two:8,.0f} images/s   ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
