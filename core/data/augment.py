"""Augmentation on the training device, on whole batches.

Crop, flip and cutout are a few batched tensor ops on the device that holds the data (the airbench
way): no DataLoader, no PIL. Alternating flip mirrors a whole epoch's images by the epoch (the loop's
Batches applies it). Perspective, AutoAugment and TrivialAugment come from torchvision and
draw their parameters per image, so they loop over the batch: slower, and `bench` says how much.
"""
from __future__ import annotations

import torch

# CIFAR-10 channel statistics (of the training set), the usual normalisation
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _v2():
    # torchvision's import (its models, ops and torch._dynamo) takes ~1.4 s: only runs that use these pay it
    from torchvision.transforms import v2

    return v2


PER_IMAGE = {
    "perspective": lambda: _v2().RandomPerspective(distortion_scale=0.2, p=0.5),
    "autoaugment": lambda: _v2().AutoAugment(_v2().AutoAugmentPolicy.CIFAR10),
    "trivialaugment": lambda: _v2().TrivialAugmentWide(),
}


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad by `padding` with zeros and take a random 32x32 window per image, in one gather."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=images.device)
    rows = dy + torch.arange(h, device=images.device).view(1, 1, h, 1)
    cols = dx + torch.arange(w, device=images.device).view(1, 1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def random_flip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, images.flip(3), images)


def alternating_flip(images: torch.Tensor, indices: torch.Tensor, dataset_size: int, epoch: int,
                     seed: int) -> torch.Tensor:
    """airbench's alternating flip: a random half of the training set (drawn once from the seed) is mirrored in
    even epochs and the other half in odd ones, so every two epochs see every image both ways, where random
    flips would show some one way twice. `indices`: the images' places in the training set."""
    half = torch.rand(dataset_size, generator=torch.Generator().manual_seed(seed * 7_919 + 17)) < 0.5
    flip = half[indices] ^ (epoch % 2 == 1)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def cutout(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size x size square per image (centres anywhere, so squares may be clipped)."""
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n, 1, 1, 1), device=images.device)
    cx = torch.randint(0, w, (n, 1, 1, 1), device=images.device)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    if size % 2 == 0:  # an even square has no centre pixel: trim the far edge
        inside &= (ys - cy < size // 2) & (xs - cx < size // 2)
    return images.masked_fill(inside, 0)


class Augment:
    """uint8 batch in, normalised float batch out: policy per image, then crop, flip, cutout."""

    def __init__(self, names: tuple[str, ...], crop_padding: int, cutout_size: int, normalize: bool,
                 device: torch.device):
        self.names = names
        self.policies = [PER_IMAGE[n]() for n in names if n in PER_IMAGE]
        self.crop_padding, self.cutout_size = crop_padding, cutout_size
        self.normalizer = Normalizer.for_config(normalize, device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.policies:
            images = torch.stack([self._policy(img) for img in images])
        if "crop" in self.names and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding)
        if "flip" in self.names:
            images = random_flip(images)
        x = self.normalizer(images)
        if "cutout" in self.names:
            x = cutout(x, self.cutout_size)  # after normalising, so the square is the mean colour
        return x

    def _policy(self, img: torch.Tensor) -> torch.Tensor:
        for policy in self.policies:
            img = policy(img)
        return img


class Normalizer:
    """uint8 images -> float, scaled to [0, 1] and standardised per channel (mean 0, std 1 = off)."""

    def __init__(self, mean, std, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.stats = {"mean": list(mean), "std": list(std)}  # what a checkpoint stores

    @classmethod
    def for_config(cls, normalize: bool, device: torch.device | str = "cpu") -> Normalizer:
        return cls(MEAN, STD, device) if normalize else cls((0.0,) * 3, (1.0,) * 3, device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std
