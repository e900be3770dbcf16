"""A run config as the table every seed project's README has: the architecture and the recipe, one row each.

Reports (core.report) put one column per run beside each other; model cards (core.deploy.hub) have one.
"""
from __future__ import annotations

from core.design.budget import count
from core.design.config import RunConfig
from core.design.spec import ACTIVATION_NAMES, POOLING_NAMES
from core.units import duration_text


def each(values: list) -> str:
    """One value when every stage has it, else all of them: "3" or "2, 2, 2, 2"."""
    return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))


def tta_name(tta_flip: bool, tta_shift: bool) -> str:
    """The test-time views in a word or three: "none", "flip", "flip and 1-pixel shifts (6 views)"."""
    return {(False, False): "none", (True, False): "flip", (False, True): "1-pixel shifts",
            (True, True): "flip and 1-pixel shifts (6 views)"}[bool(tta_flip), bool(tta_shift)]


def hyperparameters(cfg: RunConfig, imported: bool = False) -> dict[str, str]:
    """Row name -> value, in the order of the seed projects' tables (architecture first, then the recipe).
    `imported`: weights trained elsewhere, so the recipe rows say so instead of showing the defaults."""
    a, t = cfg.arch, cfg.train
    stages = a.stages
    schedule = t.schedule + (f", warm-up {t.warmup_epochs:g} epochs" if t.warmup_epochs else "") + \
        (f", ×{t.step_gamma:g} every {t.step_epochs} epochs" if t.schedule == "step" else "")
    optimizer = t.optimizer + (f", momentum {t.momentum:g}" if t.optimizer in ("sgd", "rmsprop") else "") + \
        (", Nesterov" if t.nesterov and t.optimizer == "sgd" else "") + (", Lookahead" if t.lookahead else "") + \
        (f" (pull {t.lookahead_alpha:g})" if t.lookahead and t.lookahead_alpha != 0.5 else "") + \
        (" on a (t/T)³ ramp" if t.lookahead and t.averaging_ramp else "") + \
        (", ending on its slow weights" if t.lookahead and t.lookahead_ends_slow else "") + \
        (f", BatchNorm biases at lr ×{t.bn_bias_lr_scale:g}" if t.bn_bias_lr_scale != 1 else "")
    augment = ", ".join(f"{name} ({t.crop_padding} px)" if name == "crop" else
                        f"{name} ({t.cutout_size} px)" if name == "cutout" else name for name in t.augment)
    architecture = {
        "Residual layers": str(len(stages)),
        "Blocks per layer": each([s.blocks for s in stages]),
        "Kernel sizes": each([s.kernel_size for s in stages]),
        "Shortcut kernel sizes": each([s.shortcut_kernel_size for s in stages]),
        "Channels": f"stem {a.stem.channels}{' (whitened)' if a.stem.whiten else ''}; "
                    + ", ".join(str(s.channels) for s in stages),
        "Strides": each([s.stride for s in stages]),
        "Downsampling": each([("max pool" if s.downsample == "maxpool" else "strided conv") if s.stride != 1 else "–"
                              for s in stages]),
        "Pool size": f"{a.pool_size} ({POOLING_NAMES[a.pooling].lower()})",
        "Logit scale": f"{a.logit_scale:g}",
        "Activation": ACTIVATION_NAMES[a.activation],
        "Batch norm": ("yes, scales frozen" if t.freeze_bn_scale else "yes") if a.batch_norm else "no",
        "Squeeze-excitation": f"ratio {a.se_ratio}" if a.se_ratio else "no",
        "Dropout": f"{a.dropout:g}",
    }
    recipe = {
        "Augmentation": augment or "none",
        "Normalisation": "per-channel mean and std of CIFAR-10" if t.normalize else "none ([0, 1] pixels)",
        "Optimizer": optimizer,
        "Learning rate": f"{t.lr:g}",
        "Schedule": schedule,
        "Weight decay": f"{t.weight_decay:g}",
        "Batch size": str(t.batch_size),
        "Epochs": f"as many as {duration_text(t.time_limit)} of training allow" if t.time_limit else str(t.epochs),
        "Label smoothing": f"{t.label_smoothing:g}",
        "EMA": (f"decay {t.ema_decay:g}" + (" on a (t/T)³ ramp" if t.averaging_ramp else "")) if t.ema_decay else "no",
        "Test-time augmentation": tta_name(t.tta_flip, t.tta_shift),
        "Precision": t.precision,
        "Seed": str(t.seed),
    }
    if imported:
        recipe = dict.fromkeys(recipe, "trained elsewhere (imported)")
    return architecture | recipe | {"Total parameters": f"{count(a).params:,}"}
