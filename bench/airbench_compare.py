"""Table "Speed run" (issue 11, step 4): airbench94 (airbench==0.1.8, carried as a wheel) against our
`best` on our JPEG copy: the accuracy airbench94 reaches, our accuracy in its time, our time to its accuracy.

    python -m bench.airbench_compare $OUT [--seeds 5] [--ladder 15,30,60] [--compile] [--set ema_decay=0]
    python -m bench.airbench_compare /tmp/speedrun --dry-run

1. airbench94 as published (its net, recipe and TTA), after its own warm-up, for --seeds runs (torch seeds
   0..n-1). Accuracy and time are what it prints on its last row: time = its training steps, whitening
   init and final TTA evaluation, on CUDA events. Its data: ./cifar10/{train,test}.pt written from --data
   by scripts/prepare_gpu_data.py in a work folder.
2. Ours in its time: `best` with `time_limit` = airbench's mean time, --seeds runs (train seeds 0..n-1).
   Our time is the engine's training time (steps, synchronised; evaluation apart: the final evaluation
   with flip TTA takes well under a second). A warm-up run first (cuDNN's algorithm search, compiling
   with --compile), reported apart, as airbench does its own.
3. Our time to its accuracy: `best` at each budget of --ladder seconds, one seed each; the first budget
   whose accuracy reaches airbench's mean, interpolated linearly from the budget below it.
--set KEY=VALUE changes our recipe for all of this (say which in the table): e.g. ema_decay=0, since an
EMA of 0.999 averages over ~1,000 steps and a run of a few seconds makes only a few hundred.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.common import JPEG_COPY, Report, parser, preset_config, timed_training

import torch

from scripts.prepare_gpu_data import write_airbench_data

AIRBENCH_COLUMNS = ["run", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc", "total_time_seconds"]


def last_row(printed: str) -> dict:
    """airbench's final table row ('| ... |' cells, epoch 'eval') as a dict of numbers."""
    row = next(line for line in reversed(printed.splitlines()) if line.startswith("|") and "eval" in line)
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    values = dict(zip(AIRBENCH_COLUMNS, cells))
    return {"accuracy": float(values["tta_val_acc"]), "seconds": float(values["total_time_seconds"])}


def run_airbench94(workdir: Path, seed: int, warmup: bool = False) -> tuple[dict | None, str]:
    """One airbench94 run in `workdir` (it reads ./cifar10/); (its last row, all it printed)."""
    import airbench

    torch.manual_seed(seed)
    printed, cwd = io.StringIO(), os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(printed):
            (airbench.warmup94 if warmup else airbench.train94)()
    finally:
        os.chdir(cwd)
    return (None if warmup else last_row(printed.getvalue())), printed.getvalue()


def parse_sets(pairs: list[str]) -> dict:
    changes = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    return changes


def mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="runs of airbench94 and of ours in its time")
    p.add_argument("--ladder", default="15,30,60", help="our time budgets (s) for the time to its accuracy; '' skips")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (the warm-up compiles)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change our recipe")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.data, args.seeds, args.ladder = "cpu", "builtin", 2, "3,6"
    report = Report(args.out, "airbench_compare", args)
    changes = parse_sets(args.set) | {"compile": args.compile}
    report.data |= {"copy": "built-in slice" if args.data == "builtin" else JPEG_COPY, "ours": "best",
                    "our_changes": changes}

    workdir = Path(tempfile.mkdtemp(prefix="airbench-"))
    folder = write_airbench_data(args.data, workdir)
    report.log(f"airbench data: {folder} from {args.data}")
    if args.dry_run:  # airbench needs CUDA: check its data and its table instead, and stand in for its runs
        data = torch.load(folder / "test.pt")
        assert data["images"].dtype == torch.uint8 and data["images"].shape[1:] == (32, 32, 3)
        from airbench.utils import print_training_details

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            print_training_details({"run": 0, "epoch": "eval", "tta_val_acc": 0.5, "total_time_seconds": 3.0}, True)
        theirs = [last_row(printed.getvalue())] * args.seeds
        report.log(f"dry run: airbench's own table row parses as {theirs[0]}; it stands in for its runs")
    else:
        _, printed = run_airbench94(workdir, 0, warmup=True)
        report.log(f"airbench94 warm-up:\n{printed}")
        theirs = []
        for seed in range(args.seeds):
            result, printed = run_airbench94(workdir, seed)
            report.log(printed)
            theirs.append(result)
            report.add({"who": "airbench94", "seed": seed} | result)
    target, budget = mean(theirs, "accuracy"), mean(theirs, "seconds")
    report.data["airbench94"] = {"accuracy_mean": target, "seconds_mean": budget, "runs": len(theirs)}

    warm = timed_training(preset_config("best", args, time_limit=5, **changes), "warmup", args.device)
    report.data["our_warmup"] = {"trained_seconds": warm["trained_seconds"], "wall_seconds": warm["wall_seconds"]}
    ours = []
    for seed in range(args.seeds):
        cfg = preset_config("best", args, time_limit=budget, seed=seed, **changes)
        ours.append(timed_training(cfg, f"at-its-time-{seed}", args.device))
        report.add({"who": "best, in airbench's time", "seed": seed, "time_limit": budget} | ours[-1])
    report.data["ours_in_its_time"] = {"accuracy_mean": mean(ours, "accuracy"),
                                       "trained_seconds_mean": mean(ours, "trained_seconds")}

    reached = None
    previous = None
    for seconds in [float(s) for s in args.ladder.split(",") if s.strip()]:
        row = timed_training(preset_config("best", args, time_limit=seconds, **changes), f"ladder-{seconds:g}",
                             args.device)
        report.add({"who": "best, time ladder", "time_limit": seconds} | row)
        if row["accuracy"] >= target:
            if previous is None:
                reached = row["trained_seconds"]  # at or under the first budget
            else:
                (t0, a0), (t1, a1) = previous, (row["trained_seconds"], row["accuracy"])
                reached = t0 + (target - a0) * (t1 - t0) / (a1 - a0)
            break
        previous = (row["trained_seconds"], row["accuracy"])
    report.data["our_time_to_its_accuracy"] = reached
    report.save()

    print(f"\nairbench94: {target:.2%} in {budget:.2f} s (mean of {len(theirs)}{', dry-run stand-in' * args.dry_run})")
    print(f"best in that time: {report.data['ours_in_its_time']['accuracy_mean']:.2%} "
          f"(mean of {len(ours)}; warm-up {warm['wall_seconds']:.0f} s apart)")
    print(f"best's time to {target:.2%}: " + (f"{reached:.1f} s" if reached else f"not reached by {args.ladder} s"))
    print(f"data: {report.data['copy']}; our changes to best: {changes}")


if __name__ == "__main__":
    main()
