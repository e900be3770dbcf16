"""One training step: model, optimizer, EMA and augmentation for one config, on one device, in the arithmetic
core.nn.infer.amp_policy picks: fp32, bf16 autocast, or fp16 autocast with a GradScaler (whose skipped steps,
unscale-before-clip and saved scale live here); and everything resuming needs, saved and loaded.

Apple's mps trains NCHW (channels_last backward is far slower there), without DDP or torch.compile.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from core.data.augment import Augment
from core.design.config import RunConfig
from core.engine.distributed import World
from core.engine.optim import (Lookahead, WeightEMA, build_optimizer, ema_decay_at, freeze_bn_scale,
                               load_optimizer_state, lookahead_pull_at)
from core.nn.checkpoint import flatten_state, unflatten_state
from core.nn.infer import policy_for
from core.nn.model import build_model
from core.nn.platform import keep_freed_memory


WHITEN_IMAGES = 5000  # training images a whitened stem's patch statistics are computed from (airbench: 5,000)


class Trainer:
    """Model, optimizer, EMA and augmentation for one config, and one training step."""

    def __init__(self, cfg: RunConfig, device: torch.device, world: World | None = None,
                 train_images: torch.Tensor | None = None):
        """`train_images`: uint8 training images, which a whitened stem is computed from."""
        t = self.t = cfg.train
        world = world or World()
        if device.type == "cpu":
            keep_freed_memory()  # each step frees and allocates the same activations again: no page faults
        self.augment = Augment(t.augment, t.crop_padding, t.cutout_size, t.normalize, device)
        self.model = build_model(cfg.arch)
        if cfg.arch.stem.whiten:
            if train_images is None:
                raise ValueError("a whitened stem is computed from training images: pass train_images")
            self.model.whiten_stem(self.augment.normalizer(train_images[:WHITEN_IMAGES].to(device)).cpu())
        if t.sync_batchnorm and world.size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if t.freeze_bn_scale:
            freeze_bn_scale(self.model)
        # channels_last: faster on CUDA and CPU; on mps its backward is far slower than NCHW
        self.memory_format = torch.contiguous_format if device.type == "mps" else torch.channels_last
        self.model = self.model.to(device, memory_format=self.memory_format)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are static: let cuDNN time its algorithms once
        self.optimizer = build_optimizer(self.model, t, device)
        self.ema = WeightEMA(self.model) if t.ema_decay > 0 else None
        # DDP averages the gradients over the processes during backward
        forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world.size > 1 else self.model
        self.forward = torch.compile(forward) if t.compile and device.type != "mps" else forward
        self.policy = policy_for(device, t.precision)
        self.autocast = torch.autocast(device.type, dtype=self.policy.dtype) if self.policy.dtype is not None \
            else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler(device.type) if self.policy.scaler else None
        # steps the scaler skipped (inf/nan gradients), counted on the device: no host sync per step
        self.skipped = torch.zeros((), dtype=torch.long, device=device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float,
             progress: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a uint8 batch at `lr`, `progress` (0 to 1) into the training; returns (loss,
        logits), still on the device."""
        x = self.augment(images).contiguous(memory_format=self.memory_format)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if isinstance(self.optimizer, Lookahead):
            self.optimizer.pull = lookahead_pull_at(self.t, progress, self.optimizer.alpha)
        with self.autocast:
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.t.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.clip()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.t.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                self.clip()
            scale = self.scaler._get_scale_async().clone()  # noqa: SLF001 (the scale tensor: no host sync)
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf/nan; the scale then halves
            self.scaler.update()
            self.skipped += (self.scaler._get_scale_async() < scale).long()  # noqa: SLF001
        # the schedule follows the data, not the updates: a skipped step's batch is spent, and its lr with it
        if self.ema is not None:
            self.ema.update(self.model, ema_decay_at(self.t, progress))
        return loss.detach(), logits.detach()

    def finish(self) -> None:
        """After the run's last step: Lookahead that ends on the slow weights puts them in the model."""
        if isinstance(self.optimizer, Lookahead) and self.t.lookahead_ends_slow:
            self.optimizer.end_on_slow()

    def clip(self) -> None:
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network that is evaluated and saved as the run's weights: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to resume: model, optimizer, EMA and GradScaler, as flat tensors and plain values."""
        tensors, plain = {}, {}
        parts = [("model", self.model), ("optimizer", self.optimizer)]
        parts += [("ema", self.ema)] if self.ema is not None else []
        parts += [("scaler", self.scaler)] if self.scaler is not None else []
        for prefix, part in parts:
            ts, ps = flatten_state(prefix, part.state_dict())
            tensors |= ts
            plain |= ps
        return tensors, plain

    def load_state(self, tensors: dict[str, torch.Tensor], plain: dict) -> None:
        self.model.load_state_dict(unflatten_state("model", tensors, plain))
        load_optimizer_state(self.optimizer, unflatten_state("optimizer", tensors, plain))
        if self.ema is not None:
            self.ema.load_state_dict(unflatten_state("ema", tensors, plain))
        # a scale saved by an fp16 session; none when the run trained in another arithmetic until now
        if self.scaler is not None and "scaler" in plain:
            self.scaler.load_state_dict(unflatten_state("scaler", tensors, plain))
