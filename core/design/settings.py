"""The training settings as people see them: every TrainConfig field with a label, a help text and a group,
and when it does not apply. The Train page draws one widget per setting from this; so could any other view.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

from core.design.config import AUGMENTS, OPTIMIZERS, PRECISIONS, SCHEDULES, RunConfig, TrainConfig
from core.design.presets import PRESETS
from core.design.spec import SpecError


@dataclass(frozen=True)
class Setting:
    field: str
    label: str
    help: str
    step: float | None = None       # number inputs
    options: tuple = ()             # choices
    unused: Callable[[dict], str | None] = lambda values: None  # why it does not apply to these settings


def unless(field: str, wanted: tuple, reason: str) -> Callable[[dict], str | None]:
    def check(values: dict) -> str | None:
        value = values[field]
        applies = any(w in value for w in wanted) if isinstance(value, list) else value in wanted
        return None if applies else reason
    return check


STEP_ONLY = unless("schedule", ("step",), "Only the step schedule uses it")
NO_LOOKAHEAD = unless("lookahead", (True,), "Only Lookahead uses it")
SETTINGS = {
    "Schedule": [
        Setting("epochs", "Epochs", "Passes over the training images", step=1,
                unused=lambda values: "A time limit sets the length instead: the schedule drawn over these epochs "
                                      "is stretched over the time" if values["time_limit"] else None),
        Setting("time_limit", "Time limit (s)", "Train for this many seconds instead of the epochs, evaluation "
                                                "apart, with the schedule stretched over them; 0 trains the epochs",
                step=60.0),
        Setting("batch_size", "Batch size", "Images per optimizer step, over all processes (each of N GPUs takes "
                                            "1/N). A larger batch trains faster per image on a GPU, until its "
                                            "memory runs out", step=32),
        Setting("lr", "Learning rate", "The schedule's peak learning rate", step=0.01),
        Setting("schedule", "Schedule", "How the learning rate moves: cosine decays it to 0; onecycle rises from "
                                        "lr/25 over a quarter of the steps, then decays; step multiplies it by the "
                                        "step factor every few epochs; constant keeps it; linear goes straight "
                                        "down to 0 (airbench's, after a warm-up)", options=SCHEDULES),
        Setting("warmup_epochs", "Warm-up epochs", "Rise linearly from lr/10 to lr over this many epochs before the "
                                                   "schedule; 0 for none", step=0.5),
        Setting("step_epochs", "Step every (epochs)", "Epochs between two drops of the step schedule", step=1,
                unused=STEP_ONLY),
        Setting("step_gamma", "Step factor", "The step schedule multiplies the learning rate by this at each drop",
                step=0.05, unused=STEP_ONLY),
    ],
    "Optimizer": [
        Setting("optimizer", "Optimizer", "SGD with momentum is the seeds' choice for CIFAR-10; Adam and AdamW "
                                          "want a smaller learning rate (about 0.001 to 0.01)", options=OPTIMIZERS),
        Setting("momentum", "Momentum", "Share of the previous update kept in the next one", step=0.01,
                unused=unless("optimizer", ("sgd", "rmsprop"), "Only SGD and RMSprop use momentum")),
        Setting("nesterov", "Nesterov momentum", "Look ahead along the momentum before taking the gradient",
                unused=unless("optimizer", ("sgd",), "Only SGD has Nesterov momentum")),
        Setting("weight_decay", "Weight decay", "Pull on every weight towards 0, e.g. 5e-4 with SGD; 0 for none",
                step=1e-4),
        Setting("lookahead", "Lookahead", "Every 5 steps, move a slow copy of the weights part of the way to the "
                                          "optimizer's and restart from there (Zhang et al. 2019)"),
        Setting("lookahead_alpha", "Lookahead pull", "The share of the way the slow weights move: 0.5 in Zhang et "
                                                     "al.; airbench's 0.23 averages over more steps. With the "
                                                     "averaging ramp, the pull at the end of the training",
                step=0.01, unused=NO_LOOKAHEAD),
        Setting("lookahead_ends_slow", "End on the slow weights",
                "Average BatchNorm's statistics with the weights, and end the run on the slow weights rather than "
                "the fast ones of the last few steps (airbench)", unused=NO_LOOKAHEAD),
        Setting("grad_clip", "Gradient clipping", "Largest gradient norm of a step; 0 for none", step=0.1),
        Setting("averaging_ramp", "Averaging ramp (t/T)³",
                "Weight EMA's decay and Lookahead's slow share grow as the cube of the share of training done: "
                "early weights, soon outdated, are hardly averaged (airbench)",
                unused=lambda values: None if values["lookahead"] or values["ema_decay"] > 0 else
                "Only weight EMA and Lookahead use it"),
        Setting("freeze_bn_scale", "Freeze BatchNorm scale", "BatchNorm's scales stay 1 and only its biases train: "
                                                             "the next layer's weights absorb the scale (airbench)"),
        Setting("bn_bias_lr_scale", "BatchNorm bias lr ×", "BatchNorm's biases train at the learning rate times "
                                                           "this, with the weight decay divided by it (so the decay "
                                                           "per step stays the same); airbench uses 64, 1 for none",
                step=1.0),
    ],
    "Regularization": [
        Setting("augment", "Augmentation", "Random changes to every training image. crop: pad, then take a 32×32 "
                                           "window; flip: mirror half of them; alternating_flip: mirror a random "
                                           "half in even epochs and the other half in odd ones, so two epochs show "
                                           "every image both ways (airbench); cutout: blank a square; perspective: "
                                           "tilt; autoaugment and trivialaugment: learned or random policies, drawn "
                                           "per image (slower)", options=AUGMENTS),
        Setting("crop_padding", "Crop padding", "Pixels of padding before the crop: the largest shift", step=1,
                unused=unless("augment", ("crop",), "Only the crop augmentation uses it")),
        Setting("cutout_size", "Cutout size", "Side of the blanked square, in pixels", step=1,
                unused=unless("augment", ("cutout",), "Only the cutout augmentation uses it")),
        Setting("label_smoothing", "Label smoothing", "Share of each target spread over the other classes; 0.1 is "
                                                      "usual, 0 for none", step=0.05),
        Setting("ema_decay", "Weight EMA", "Keep a moving average of the weights, and evaluate and save it instead "
                                           "of them, e.g. 0.999; 0 for none", step=0.001),
        Setting("normalize", "Normalize inputs", "Subtract CIFAR-10's channel means and divide by their standard "
                                                 "deviations"),
    ],
    "Evaluation and engine": [
        Setting("val_fraction", "Validation share", "Hold this share of the training images out and evaluate on "
                                                    "it instead of the test split, so that no choice is made on test "
                                                    "images; 0 evaluates on test", step=0.05),
        Setting("tta_flip", "Flip at test time", "Average each prediction over the image and its mirror"),
        Setting("tta_shift", "Shift at test time", "Also average over the image shifted by one pixel up-left and "
                                                   "down-right, each with half the weight of the image itself; with "
                                                   "the flip, 6 views (airbench)"),
        Setting("precision", "Precision", "auto: bf16 where the hardware computes it natively (GPUs from sm_80 "
                                          "on: A100, H100, RTX 30xx; CPUs with AMX), fp16 with a gradient scaler "
                                          "on V100, T4, RTX 20xx and Apple silicon, else fp32. fp16 also runs on "
                                          "a CPU (slowly)", options=PRECISIONS),
        Setting("compile", "torch.compile", "Compile the model: faster steps on a GPU, after a minute or two of "
                                            "compiling; rarely worth it on a CPU"),
        Setting("seed", "Seed", "Seeds the weights, the data order and the augmentation: the same seed replays a "
                                "run", step=1),
        Setting("log_every", "Log every (steps)", "Steps between two points of the loss curve within an epoch "
                                                  "(a point is also written every few seconds)", step=5),
        Setting("stall_limit", "Stall limit (s)", "A run that finishes no step for this long is stopped and marked "
                                                  "stalled, freeing its device; 0: automatic, the larger of 2 "
                                                  "minutes and 30 median steps", step=60.0),
        Setting("sync_batchnorm", "Sync BatchNorm", "On several GPUs: BatchNorm statistics over the whole batch "
                                                    "instead of each GPU's share (SyncBatchNorm; GPUs only)"),
    ],
}
LABELS = {s.field: s.label for group in SETTINGS.values() for s in group}


def recipe(preset: str | None) -> TrainConfig:
    return RunConfig.from_preset(preset).train if preset in PRESETS else TrainConfig()


def settings_error(values: dict) -> str | None:
    """TrainConfig's complaint about the settings, naming the setting by its label."""
    try:
        TrainConfig.from_dict(values)
    except SpecError as e:
        message = str(e)
        for name, label in LABELS.items():
            message = message.replace(f"train.{name}:", f"{label}:")
        return message
    return None
