"""Table "Speed" (issue 11, step 2): training images/s of the engine on a GPU, against the seed-style loop
and against the card's measured bf16 peak, for resnet26-seed and best, with what each engine setting gives.

    python -m bench.gpu_speed $OUT [--seconds 15] [--data PATH]     # on the GPU machine
    python -m bench.gpu_speed /tmp/speed --dry-run                   # on a CPU: proves it runs

One process: the peak (a large bf16 matrix product), then the seed-style loop once (torchvision
transforms on PIL images through a DataLoader, fp32, batch 128: as seed 000 trained), then each engine
variant for --seconds after its warm-up (compile time is the warm-up, reported apart). A variant changes
one thing from the row it names, so each row's gain is that change's. `python -m core bench --preset
resnet26-seed --device cuda [--compile]` gives the first (third) row alone with its own seed-style loop.
"""
from __future__ import annotations

from bench.common import JPEG_COPY, Report, parser, preset_config

from core.measure.bench import (bench_engine, bench_seed_style, compute_dtype, engine_settings, matmul_peak,
                                share_of_peak, train_flops_per_image)
from core.data.datasets import load_dataset
from core.design.budget import count
from core.nn.infer import pick_device

CROP_FLIP = ["crop", "flip"]  # what the seed-style loop does: the like-for-like comparison
# (name, preset, training changes, what it is compared with, predicted gain over that row)
VARIANTS = [
    ("seed recipe", "resnet26-seed", {}, None, None),
    ("crop+flip", "resnet26-seed", {"augment": CROP_FLIP}, "seed recipe",
     "per-image perspective+AutoAugment loop over the batch in Python: dropping them should gain the most"),
    ("crop+flip, compiled", "resnet26-seed", {"augment": CROP_FLIP, "compile": True}, "crop+flip",
     "fused BN/ReLU/add elementwise kernels: 1.2-1.5x"),
    ("crop+flip, cuDNN benchmark off", "resnet26-seed", {"augment": CROP_FLIP, "cudnn_benchmark": False},
     "crop+flip", "what turning cudnn.benchmark on gave: expect 0.8-0.95x here"),
    ("crop+flip, fp32", "resnet26-seed", {"augment": CROP_FLIP, "precision": "fp32"}, "crop+flip",
     "bf16 autocast's gain: expect 0.4-0.7x here (TF32 convolutions)"),
    ("crop+flip, batch 512", "resnet26-seed", {"augment": CROP_FLIP, "batch_size": 512}, "crop+flip",
     "fewer launches and optimizer steps per image: 1.1-1.3x"),
    ("best", "best", {}, None, None),
    ("best, compiled", "best", {"compile": True}, "best", "as for resnet26-seed"),
    ("best, EMA off", "best", {"ema_decay": 0}, "best",
     "EMA's cost, one lerp over the weights a step, with no host sync since WeightEMA replaced "
     "AveragedModel (whose step count on the GPU was tested at every update): expect about 1.0-1.1x"),
]


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per variant, after its warm-up")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.data, args.seconds = "cpu", "builtin", 1.0
    report = Report(args.out, "gpu_speed", args)
    device = pick_device(args.device)
    split = load_dataset(args.data).train
    report.log(f"data: {len(split):,} training images of {args.data} ({JPEG_COPY} unless builtin says otherwise)")

    seed_cfg = preset_config("resnet26-seed", args)
    peak = matmul_peak(device, compute_dtype(seed_cfg, device))
    report.data["peak"] = peak
    report.log(f"peak: {peak['tflops']:.1f} TFLOP/s ({peak['dtype']}, {peak['side']}^3 matrix product)")
    seed_style = bench_seed_style(seed_cfg, split, device, args.seconds)
    seed_style |= share_of_peak(seed_style["images_per_s"], train_flops_per_image(seed_cfg), peak)
    report.data["seed_style"] = seed_style
    report.log(f"seed-style loop (resnet26-seed): {seed_style['images_per_s']:.0f} img/s")

    rates = {}
    for name, preset, changes, base, predicted in VARIANTS:
        if args.dry_run and changes.get("compile"):
            continue  # compiling on a CPU takes minutes (checked once: it works); the GPU tests compile
        changes = dict(changes)
        cudnn_benchmark = changes.pop("cudnn_benchmark", True)
        cfg = preset_config(preset, args, **changes)
        result = bench_engine(cfg, split, device, args.seconds, cudnn_benchmark=cudnn_benchmark)
        rates[name] = result["images_per_s"]
        report.add({"variant": name, "preset": preset, "params": count(cfg.arch).params,
                    "macs_per_image": count(cfg.arch).macs, **engine_settings(cfg, device),
                    "cudnn_benchmark": cudnn_benchmark, **result,
                    **share_of_peak(result["images_per_s"], train_flops_per_image(cfg), peak),
                    "x_seed_style": result["images_per_s"] / seed_style["images_per_s"],
                    "compared_with": base, "x_compared": result["images_per_s"] / rates[base] if base else None,
                    "predicted": predicted})

    print(f"\n{'variant':34} {'img/s':>8} {'x seed':>7} {'of peak':>8} {'warm-up s':>9}  x its base")
    for row in report.data["rows"]:
        base = f"{row['x_compared']:.2f} x {row['compared_with']}" if row["compared_with"] else ""
        print(f"{row['variant']:34} {row['images_per_s']:8.0f} {row['x_seed_style']:7.2f} "
              f"{row['fraction_of_peak']:8.1%} {row['warmup_seconds']:9.1f}  {base}")
    print(f"seed-style loop: {seed_style['images_per_s']:.0f} img/s; peak {peak['tflops']:.3g} TFLOP/s {peak['dtype']}")


if __name__ == "__main__":
    main()
