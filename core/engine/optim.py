"""The optimizer, the weight averages and the learning rate: what the config names, built; its saved state
loaded under the flags this config and device give (fused, nesterov, ...); and the lr, EMA decay and
Lookahead pull at any point from the training's progress alone (so resuming needs no scheduler state)."""
from __future__ import annotations

import copy
import math

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from core.design.config import TrainConfig


# ---- optimizer and learning rate ------------------------------------------------------------------


class Lookahead:
    """Lookahead (Zhang et al. 2019): every k steps, move slow weights alpha of the way to the
    fast ones and restart the fast ones from there."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5,
                 buffers: list[torch.Tensor] | tuple = ()):
        """`buffers` (BatchNorm's running statistics) are averaged alongside the weights, so that the slow weights
        come with statistics of their own (airbench)."""
        self.optimizer, self.k, self.alpha, self.steps = optimizer, k, alpha, 0
        self.pull = alpha  # this step's alpha: the trainer lowers it early on with the (t/T)^3 ramp
        self.fast = [p for g in optimizer.param_groups for p in g["params"]] + list(buffers)
        self.slow = [p.detach().clone() for p in self.fast]

    @property
    def param_groups(self) -> list[dict]:
        # the inner optimizer's list as it is now: its load_state_dict replaces the list (a copy taken here
        # once would keep the old groups, and an lr set on them would reach nobody)
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.k == 0:
            torch._foreach_lerp_(self.slow, self.fast, self.pull)
            torch._foreach_copy_(self.fast, self.slow)

    @torch.no_grad()
    def end_on_slow(self) -> None:
        """The weights become the slow ones, as Lookahead returns them (Zhang et al., Algorithm 1), not the fast
        ones of the up to k-1 steps since the last sync."""
        torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict:
        return {"inner": self.optimizer.state_dict(), "steps": self.steps,
                "slow": dict(enumerate(self.slow))}  # int keys, as a checkpoint gives them back

    def load_state_dict(self, state: dict) -> None:
        load_optimizer_state(self.optimizer, state["inner"])
        self.steps = state["steps"]
        for i, t in enumerate(self.slow):
            t.copy_(state["slow"][i])


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load a saved optimizer state into an optimizer built from the config on this device: the moments and
    counts come from the save, every hyperparameter of a group (fused, foreach, nesterov, momentum, weight
    decay, lr scale) from this build, so a run started on a CPU and resumed on a GPU steps fused there."""
    if isinstance(optimizer, Lookahead):
        optimizer.load_state_dict(state)
        return
    built = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    saved = state["param_groups"]
    if len(saved) != len(built):
        raise ValueError(f"the saved optimizer has {len(saved)} parameter groups, this config builds {len(built)}")
    # torch casts the state (e.g. Adam's step onto the GPU for a fused step) by the groups it loads: give it ours
    optimizer.load_state_dict({**state, "param_groups": [{**s, **b} for s, b in zip(saved, built)]})


def freeze_bn_scale(model: torch.nn.Module) -> None:
    """BatchNorm's scale stays 1 (airbench): the next layer's weights absorb it, one fewer thing to learn."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None:
            module.weight.requires_grad_(False)


def param_groups(model: torch.nn.Module, t: TrainConfig) -> list[dict]:
    """The trainable parameters; with a BatchNorm bias lr scale, BatchNorm's biases in a group of their own
    whose lr is scaled by it and weight decay divided by it (so the decay per step stays the same)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if t.bn_bias_lr_scale == 1:
        return [{"params": trainable}]
    biases = {id(m.bias) for m in model.modules() if isinstance(m, _BatchNorm) and m.bias is not None}
    groups = [{"params": [p for p in trainable if id(p) not in biases]},
              {"params": [p for p in trainable if id(p) in biases], "lr_scale": t.bn_bias_lr_scale,
               "weight_decay": t.weight_decay / t.bn_bias_lr_scale}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device):
    params = param_groups(model, t)
    fused = {"fused": True} if device.type == "cuda" else {}
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                              weight_decay=t.weight_decay, **fused)
    elif t.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
    elif t.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
    elif t.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)
    if not t.lookahead:
        return opt
    statistics = [b for b in model.buffers() if b.is_floating_point()] if t.lookahead_ends_slow else []
    return Lookahead(opt, alpha=t.lookahead_alpha, buffers=statistics)


class WeightEMA:
    """An exponential moving average of a model's weights and buffers, evaluated and saved instead of them.
    Its count of updates is a Python int: torch's AveragedModel keeps it as a tensor and tests it at every
    update, a host sync per step. Saved in AveragedModel's layout (module.*, n_averaged), so either loads."""

    def __init__(self, model: torch.nn.Module):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        if self.updates == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            floats = [(m, t) for m, t in zip(mine, theirs) if m.is_floating_point()]
            torch._foreach_lerp_([m for m, _ in floats], [t for _, t in floats], 1 - decay)
            for m, t in zip(mine, theirs):
                if not m.is_floating_point():  # BatchNorm's batch count
                    m.copy_(t)
        self.updates += 1

    def state_dict(self) -> dict:
        return {**{f"module.{k}": v for k, v in self.module.state_dict().items()},
                "n_averaged": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict({k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"})
        self.updates = int(state["n_averaged"])


def averaging_ramp(t: TrainConfig, progress: float) -> float:
    """How much of its strength weight averaging has at this share of the training: (t/T)^3 with the ramp
    (airbench: early weights are poor and soon forgotten, so average them little), else all of it."""
    return min(1.0, max(0.0, progress)) ** 3 if t.averaging_ramp else 1.0


def ema_decay_at(t: TrainConfig, progress: float) -> float:
    return t.ema_decay * averaging_ramp(t, progress)


def lookahead_pull_at(t: TrainConfig, progress: float, alpha: float) -> float:
    """Lookahead's alpha at this share of the training: the slow weights' own share (1 - alpha) grows with
    the ramp, so that early on the slow weights just follow the fast ones."""
    return 1 - (1 - alpha) * averaging_ramp(t, progress)


def lr_at(t: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step, from the step alone (so resuming needs no scheduler
    state): linear warm-up from lr/10, then the schedule's shape over the remaining steps."""
    warmup = round(t.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return t.lr * (0.1 + 0.9 * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if t.schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if t.schedule == "onecycle":  # torch's OneCycleLR shape: up from lr/25 for 25% of steps, cosine down
        rise = 0.25
        if warmup == 0 and progress < rise:
            return t.lr * (0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * progress / rise)))
        start = 0 if warmup else rise
        down = (progress - start) / (1 - start)
        return t.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * down)))
    if t.schedule == "linear":  # airbench: after the warm-up, straight down to 0
        return t.lr * (1 - progress)
    if t.schedule == "step":
        return t.lr * t.step_gamma ** ((step - warmup) // (t.step_epochs * steps_per_epoch))
    return t.lr
