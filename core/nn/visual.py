"""Pictures for people: thumbnails, the network's input made visible, Grad-CAM overlays.

Everything returns uint8 (height, width, 3) arrays, which any image widget shows as they are.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

THUMBNAIL = 192    # the longest side of a thumbnail, in pixels
CAM_OPACITY = 0.5  # how much of the overlay is heat map rather than image

# Turbo (Mikhailov 2019, Google), as his polynomial fit: a rainbow map whose brightness rises smoothly,
# so cold reads dark blue and hot reads red without jet's false bands. Coefficients by power of x, per channel.
_TURBO = torch.tensor([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def thumbnail(image: Image.Image, size: int = THUMBNAIL) -> np.ndarray:
    """The image shrunk to fit a `size` square, its aspect kept; a smaller image stays as it is."""
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small.convert("RGB"))


def enlarge(image: torch.Tensor, scale: int) -> np.ndarray:
    """A uint8 (3, H, W) image `scale` times larger by repeating pixels, so each stays a crisp square
    (a browser scaling a 32x32 image up would blur it)."""
    return image.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """Turbo colours (..., 3) as floats in [0, 1] for values in [0, 1]."""
    powers = values.clamp(0, 1).unsqueeze(-1) ** torch.arange(6, dtype=values.dtype)
    return (powers @ _TURBO.to(values.dtype).T).clamp(0, 1)


def cam_overlay(image: torch.Tensor, cam: torch.Tensor, scale: int, opacity: float = CAM_OPACITY) -> np.ndarray:
    """A Grad-CAM map (H, W) in [0, 1] over its uint8 (3, H, W) image, both `scale` times larger: the image's
    pixels stay crisp squares, as `enlarge` shows them, and the map is smoothed between its pixels."""
    size = (image.shape[1] * scale, image.shape[2] * scale)
    heat = F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    picture = torch.from_numpy(enlarge(image, scale)).float() / 255
    blended = (1 - opacity) * picture + opacity * heat_colours(heat)
    return (blended * 255).round().to(torch.uint8).numpy()
