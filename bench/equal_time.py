"""Table "Accuracy at equal time" (issues 11, 23 and 29): presets, each trained for the same N minutes on the same
device and data; test accuracy side by side. On a GPU: seed 000's recipe (resnet26-seed) against `best`; on a
CPU (--device cpu): laptop, laptop-onecycle, resnet20 and the anchor, airbench94 (docs/PERFORMANCE.md).

    python -m bench.equal_time $OUT --minutes 8 [--recipes resnet26-seed,best] [--compile] [--export best]
    python -m bench.equal_time $OUT --device cpu --minutes 10,30 --recipes laptop,laptop-onecycle,resnet20,airbench94
    python -m bench.equal_time /tmp/accuracy --dry-run

What is fair: one clock for both. Each recipe trains for N minutes of training time (the engine's
`time_limit`: the steps, their augmentation and, with --compile, compiling count; evaluations and
checkpoint saves do not), and its schedule, warm-up included, is stretched over those minutes, so each
ends its schedule whatever its speed: a slow recipe sees fewer epochs, as it would in a fixed time.
Everything else is the recipe's own: batch size, augmentations, EMA, flip TTA. Accuracy: the final
weights (EMA ones where the recipe keeps them) on the copy's 10,000 test images; seed 0, one run each.
--export PRESET writes that recipe's run, exported as it would ship (fp16 best checkpoint), as one .tar.
`airbench94` as a recipe, on the CPU only, is airbench94's own code for the same minutes (bench/airbench_cpu.py:
its time counts its whitening and steps, its TTA apart, as ours); on a GPU, bench/airbench_compare.py.
"""
from __future__ import annotations

import contextlib
import tarfile
from pathlib import Path

import torch

from bench.airbench_cpu import AIRBENCH94, BATCH_SIZE, DRY_RUN_BATCH_SIZE, Airbench94OnCpu
from bench.common import JPEG_COPY, Report, parser, preset_config, timed_training

from core.deploy.fp16 import export
from core.design.budget import count
from core.runs.run import Run
from core.runs.speeds import kernels_text


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--minutes", default="8", help="training minutes per recipe; several, comma-separated: a table each")
    p.add_argument("--recipes", default="resnet26-seed,best", help="presets, comma-separated, in order")
    p.add_argument("--compile", action="store_true", help="torch.compile every recipe's model")
    p.add_argument("--export", metavar="PRESET", help="also write this recipe's run, exported (fp16), as a .tar")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.data, args.minutes = "cpu", "builtin", "0.1"
    minutes = [float(m) for m in args.minutes.split(",")]
    recipes = args.recipes.split(",")
    if AIRBENCH94 in recipes and args.device != "cpu":
        p.error(f"{AIRBENCH94} runs here on the CPU only; on a GPU, python -m bench.airbench_compare")
    report = Report(args.out, "equal_time", args)
    report.data |= {"minutes": minutes, "compile": args.compile, "threads": torch.get_num_threads(),
                    "copy": "built-in slice" if args.data == "builtin" else JPEG_COPY}
    anchor = Airbench94OnCpu(args.data, report.log, DRY_RUN_BATCH_SIZE if args.dry_run else BATCH_SIZE) \
        if AIRBENCH94 in recipes else contextlib.nullcontext()
    with anchor:
        for limit in minutes:
            for preset in recipes:
                if preset == AIRBENCH94:
                    report.add({"recipe": preset} | anchor.row(seed=0, minutes=limit))
                    continue
                cfg = preset_config(preset, args, time_limit=limit * 60, compile=args.compile)
                report.log(f"{preset}: {count(cfg.arch).params:,} parameters, {limit:g} min of training on "
                           f"{args.device}, recipe {cfg.train.to_dict()}")
                result = timed_training(cfg, f"{preset}-{limit:g}min", args.device, args.out / "runs")
                report.add({"recipe": preset, "minutes": limit, "params": count(cfg.arch).params,
                            "train": cfg.train.to_dict()} | result)
                if preset == args.export:
                    shipped = export(Run(Path(result["run"])), Run(Path(result["run"]).with_name(f"{preset}-export")))
                    with tarfile.open(args.out / f"{preset}-run.tar", "w") as tar:
                        tar.add(shipped.dir, arcname=f"{preset}-{limit:g}min")
                    report.log(f"exported {shipped.dir} to {args.out / f'{preset}-run.tar'}")

    print(f"\n{'min':>4} {'recipe':16} {'params':>10} {'train s':>8} {'epochs':>7} {'img/s':>8} {'test acc':>9}")
    for row in report.data["rows"]:
        print(f"{row['minutes']:4g} {row['recipe']:16} {row['params']:10,} {row['trained_seconds']:8.0f} "
              f"{row['epochs']:7.1f} {row['images_per_s_median']:8.0f} {row['accuracy']:9.2%}")
    print(f"data: {report.data['copy']}; device {report.data['device_name']}, {kernels_text(report.data['cpu'])}, "
          f"{report.data['threads']} threads; compile {args.compile}")


if __name__ == "__main__":
    main()
