"""Named designs: the seed projects' networks, classic references, and our own.

Each preset is plain data: an architecture (ArchSpec JSON) and the training settings that differ
from the defaults in core.config (its recipe). `source` says where it comes from and the
parameter count the source reports, when it reports one.
"""
from __future__ import annotations

from core.spec import ArchSpec, SpecError


def _stages(blocks: list[int], channels: list[int]) -> list[dict]:
    return [{"blocks": b, "channels": c} for b, c in zip(blocks, channels)]


# Seed 000's recipe, the best of the seeds (97.12% on lossless CIFAR-10).
SEED_000_RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                   "batch_size": 128, "augment": ["crop", "flip", "perspective", "autoaugment"]}

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
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise SpecError(f"preset: unknown name {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_spec(name: str) -> ArchSpec:
    return ArchSpec.from_dict(get_preset(name)["arch"])
