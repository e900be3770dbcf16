"""Named designs: the seed projects' networks, classic references, and our own.

Each preset is plain data: an architecture (ArchSpec JSON) and the training settings that differ
from the defaults in core.design.config (its recipe). `source` says where it comes from and the
parameter count the source reports, when it reports one. `fp32_cpu_variant` names the preset to train instead
on a CPU that computes in fp32 (no AMX or AVX512-BF16), for a design sized for bf16.
"""
from __future__ import annotations

from core.design.spec import ArchSpec, SpecError


def _stages(blocks: list[int], channels: list[int]) -> list[dict]:
    return [{"blocks": b, "channels": c} for b, c in zip(blocks, channels)]


def _laptop_arch(stem: int, widths: tuple[int, ...], activation: str, head: dict) -> dict:
    """airbench94's geometry as a ResNet: a 2x2 whitened stem (31x31 maps), then one block a stage, each halving the
    map by max pooling after its first conv (15, 7, 3), and a global pool into the head."""
    return {"stem": {"channels": stem, "kernel_size": 2, "whiten": True}, "pool_size": 3, "activation": activation,
            "stages": [{"blocks": 1, "channels": c, "stride": 2, "downsample": "maxpool"} for c in widths]} | head


# airbench94's head: the max over the last 3x3 map, and its logits scaled by 1/9 (ResNet-9: the max, and 0.125)
AIRBENCH_HEAD = {"pooling": "max", "logit_scale": 0.1111}


# Seed 000's recipe, the best of the seeds (97.12% on lossless CIFAR-10).
SEED_000_RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                   "batch_size": 128, "augment": ["crop", "flip", "perspective", "autoaugment"]}

# airbench94's tricks and step sizes, for a time limit rather than epochs (epochs: the warm-up's share, 23%).
LAPTOP_RECIPE = {"epochs": 10, "time_limit": 1800, "batch_size": 512, "lr": 0.75, "momentum": 0.85, "nesterov": True,
                 "weight_decay": 0.00133, "schedule": "linear", "warmup_epochs": 2.3, "lookahead": True,
                 "averaging_ramp": True, "freeze_bn_scale": True, "bn_bias_lr_scale": 64, "label_smoothing": 0.2,
                 "augment": ["crop", "alternating_flip"], "crop_padding": 2, "tta_flip": True, "tta_shift": True}

PRESETS: dict[str, dict] = {
    "resnet26-seed": {
        "description": "Seed 000's best network: four stages of three blocks, uneven widths.",
        "source": "seed 000 (ResNet26_97): 4,978,810 parameters, 97.12% on lossless CIFAR-10",
        "source_params": 4_978_810,
        "arch": {"stages": _stages([3, 3, 3, 3], [128, 100, 164, 200]), "pool_size": 4},
        "train": SEED_000_RECIPE,
    },
    "resnet24-seed": {
        "description": "Seed 000's second network: blocks 3,3,2,3.",
        "source": "seed 000 (ResNet24_9684): 4,969,776 parameters, 96.84% on lossless CIFAR-10",
        "source_params": 4_969_776,
        "arch": {"stages": _stages([3, 3, 2, 3], [138, 100, 204, 190]), "pool_size": 4},
        "train": SEED_000_RECIPE,
    },
    "resnet18": {
        "description": "The classic ResNet-18 for CIFAR: over the 5M budget, kept as the reference.",
        "source": "He et al. 2016, CIFAR variant; seed 000 reports 88.56%",
        "source_params": 11_173_962,
        "arch": {"stages": _stages([2, 2, 2, 2], [64, 128, 256, 512]), "pool_size": 4},
        "train": {},
    },
    "resnet10-wide": {
        "description": "One block per stage at ResNet-18 widths: seed 003's network.",
        "source": "seed 003: about 4.9M parameters, 91% with Adam lr 0.01, dropout 0.1, batch 64",
        "arch": {"stages": _stages([1, 1, 1, 1], [64, 128, 256, 512]), "pool_size": 4, "dropout": 0.1},
        "train": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "batch_size": 64},
    },
    "wide-resnet-seed": {
        "description": "Seed 001's wide, shallow net: a 16-channel stem, widths 16, 64, 128, 256.",
        "source": "seed 001: 93.7% after 100 epochs (parameter count not given)",
        "arch": {"stem": {"channels": 16}, "stages": _stages([2, 3, 4, 3], [16, 64, 128, 256]), "pool_size": 4},
        "train": {"epochs": 100},
    },
    "se-resnet-seed": {
        "description": "Seed 002's three-stage net with squeeze-and-excitation, Lookahead and gradient clipping.",
        "source": ("seed 002: reports 4,697,742 parameters and 85.36%; its SE unit is not described, and "
                   "with the standard one (ratio 16) this design counts 4,733,610"),
        "arch": {"stages": _stages([4, 4, 3], [64, 128, 256]), "se_ratio": 16, "pool_size": 8},
        "train": {"lookahead": True, "grad_clip": 0.1},
    },
    "resnet20": {
        "description": "He et al.'s ResNet-20: 0.27M parameters, small enough to train on a CPU.",
        "source": "He et al. 2016: 0.27M parameters, 91.25% on lossless CIFAR-10",
        "arch": {"stages": _stages([3, 3, 3], [16, 32, 64]), "pool_size": 8},
        "train": {"epochs": 30, "schedule": "onecycle", "lr": 0.2, "batch_size": 256,
                  "label_smoothing": 0.1},
    },
    "best": {
        "description": ("Our candidate for the most accuracy in a fixed time on a GPU: three stages of two blocks "
                        "(80, 160, 320 channels), downsampling early so that most parameters sit where they cost "
                        "few MACs; batch 512 at a linearly scaled lr with warm-up, label smoothing, weight EMA, "
                        "cutout and flip TTA."),
        "source": ("ours, chosen by reasoning and not yet measured against resnet26-seed at equal training "
                   "time: ResNet-18's first three stages, wider, at 55% of resnet26-seed's "
                   "MACs and half its depth, so about twice the images per second; lr 0.1 at batch 128 scaled "
                   "to 0.4 at 512 with 2 epochs of warm-up (Goyal et al. 2017); label smoothing 0.1 (Szegedy "
                   "et al. 2016); cutout 16 (DeVries & Taylor 2017, CIFAR-10); batched augmentations only, "
                   "since per-image policies (AutoAugment, perspective) loop over the batch; EMA and flip TTA "
                   "as in the speed-run recipes (airbench)"),
        "arch": {"stem": {"channels": 64}, "pool_size": 8,
                 "stages": [{"blocks": 2, "channels": 80, "stride": 1}, {"blocks": 2, "channels": 160, "stride": 2},
                            {"blocks": 2, "channels": 320, "stride": 2}]},
        "train": {"epochs": 40, "batch_size": 512, "lr": 0.4, "nesterov": True, "warmup_epochs": 2,
                  "label_smoothing": 0.1, "ema_decay": 0.999, "augment": ["crop", "flip", "cutout"],
                  "cutout_size": 16, "tta_flip": True},
    },
    "laptop": {
        "description": ("The most accuracy for a fixed time on a CPU without a GPU: 2.1M parameters and 125M MACs an "
                        "image, airbench94's geometry as a ResNet: a 2x2 whitened stem (31x31 maps), then its widths "
                        "(64, 256, 256) as one residual block a stage, each halving the map by 2x2 max pooling after "
                        "its first conv (15x15, 7x7, 3x3), GELU, and airbench's head (the max over the last map, "
                        "logits scaled by 1/9); trained for 30 minutes, not for epochs, with "
                        "airbench's tricks: alternating flip, Nesterov SGD at batch 512 with warm-up then linear "
                        "decay, Lookahead on a (t/T)^3 ramp, frozen BatchNorm scales with 64x lr on their biases, "
                        "label smoothing 0.2, and 6-view TTA. In 10 minutes on a 2-core laptop-class Xeon with AMX: "
                        "90.5-90.6% on the test images where it trained 810-870 images a second (before the head), "
                        "90.0% at 645 (8 epochs); on a 2-core AMD EPYC Zen 4 (AVX512-BF16, no AMX) 88.5% at 5 "
                        "epochs, level with laptop-narrow, and ahead of it in 30 minutes of one core (90.2% against "
                        "89.9%). Sized for bf16: a CPU that trains in fp32 trains laptop-narrow instead."),
        "source": ("ours, after airbench94 (Keller Jordan, cifar10-airbench: 94% in 9.9 epochs) and David Page's "
                   "ResNet-9: the widths, max pooling and airbench's step sizes (lr, momentum, weight decay, "
                   "warm-up), airbench's 2x2 whitening, GELU and head each chosen by measurement on the JPEG copy of "
                   "CIFAR-10, on a 2-core Xeon; 91.3-91.6% there in 30 minutes"),
        "arch": _laptop_arch(stem=32, widths=(64, 256, 256), activation="gelu", head=AIRBENCH_HEAD),
        "train": LAPTOP_RECIPE,
        "fp32_cpu_variant": "laptop-narrow",
    },
    "laptop-narrow": {
        "description": ("laptop at half its widths (32, 128, 128), with ReLU and an average-pooled head, for CPUs that "
                        "compute in fp32: 0.52M "
                        "parameters and 37M MACs an image, the same recipe (GELU costs 6-13% of a step there, 5% on "
                        "AMX). A CPU without AVX512-BF16 or AMX (most laptops: AVX2 Intel and AMD before Zen 4) "
                        "trains laptop at a third of the speed it trains this one, so this one sees three times the "
                        "epochs in a time limit. In 10 minutes on a 2-core Xeon restricted to AVX2: 87.3% on the test "
                        "images (laptop 80.9% and laptop-onecycle 82.9%, measured with the 3x3 stem of the time); "
                        "on a 2-core AMD EPYC (Zen 3, AVX2): 86.6% (laptop-onecycle 78.1%, resnet20 75.0%); "
                        "with its AMX, laptop is ahead."),
        "source": ("ours: laptop's design and recipe at half width, measured on the JPEG copy of CIFAR-10 on a 2-core "
                   "Xeon under ONEDNN_MAX_CPU_ISA=AVX2, in fp32 (docs/PERFORMANCE.md, fifth, eighth and ninth "
                   "rounds), then on a 2-core AMD EPYC with AVX2 only (twelfth round)"),
        "arch": _laptop_arch(stem=32, widths=(32, 128, 128), activation="relu", head={}),
        "train": LAPTOP_RECIPE,
    },
    "laptop-onecycle": {
        "description": ("laptop before the speed-run tricks, kept for comparison: a ResNet-9-like net narrowed to "
                        "1.2M parameters and 45M MACs an image (a 32-channel stem, then one block per stage at 64, "
                        "128 and 256 channels, each halving the map), trained for 30 minutes, not for epochs, with "
                        "label smoothing 0.2 and flip TTA."),
        "source": ("ours, chosen by measurement on the JPEG copy of CIFAR-10 on a 2-core Xeon: in a fixed "
                   "CPU time fewer, cheaper layers that see more epochs win (this net "
                   "for 7 epochs 82.9% against the 96/192/384-channel one for 3 epochs 75.9% in about the same "
                   "time); shape after David Page's ResNet-9 (DAWNBench) and airbench94; progressive resizing "
                   "and a whitened stem were tried and left out: no gain shown at equal time"),
        "arch": {"stem": {"channels": 32}, "pool_size": 4,
                 "stages": [{"blocks": 1, "channels": 64, "stride": 2}, {"blocks": 1, "channels": 128, "stride": 2},
                            {"blocks": 1, "channels": 256, "stride": 2}]},
        "train": {"epochs": 30, "time_limit": 1800, "batch_size": 256, "lr": 0.2, "nesterov": True,
                  "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.2, "tta_flip": True},
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise SpecError(f"preset: unknown name {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_for_cpu(name: str, computes_bf16: bool) -> str:
    """The preset to train for `name` on a CPU: its `fp32_cpu_variant` where the CPU has no native bf16 (no
    AVX512-BF16 or AMX, or oneDNN capped below them), since a design sized for bf16 trains a few
    epochs at most in fp32 in the same time; else `name`."""
    return name if computes_bf16 else PRESETS.get(name, {}).get("fp32_cpu_variant", name)


def preset_spec(name: str) -> ArchSpec:
    return ArchSpec.from_dict(get_preset(name)["arch"])
