"""The optimizer and the learning rate: what the config names, built, and the lr at any step from the step
alone (so resuming needs no scheduler state)."""
from __future__ import annotations

import math

import torch

from core.design.config import TrainConfig


# ---- optimizer and learning rate ------------------------------------------------------------------


class Lookahead:
    """Lookahead (Zhang et al. 2019): every k steps, move slow weights alpha of the way to the
    fast ones and restart the fast ones from there."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        self.optimizer, self.k, self.alpha, self.steps = optimizer, k, alpha, 0
        self.param_groups = optimizer.param_groups
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.slow = [p.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.k == 0:
            torch._foreach_lerp_(self.slow, self.params, self.alpha)
            torch._foreach_copy_(self.params, self.slow)

    def state_dict(self) -> dict:
        return {"inner": self.optimizer.state_dict(), "steps": self.steps,
                "slow": {str(i): t for i, t in enumerate(self.slow)}}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["inner"])
        self.steps = state["steps"]
        for i, t in enumerate(self.slow):
            t.copy_(state["slow"][i])


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device):
    params = model.parameters()
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
    return Lookahead(opt) if t.lookahead else opt


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
    if t.schedule == "step":
        return t.lr * t.step_gamma ** ((step - warmup) // (t.step_epochs * steps_per_epoch))
    return t.lr
