"""Images from users and from datasets, made safe to decode and turned into network inputs.

`open_image` accepts whatever a user might upload (any Pillow format, any colour mode or bit depth,
EXIF-rotated photos) and returns plain RGB, or raises one `ImageError` naming the file. Sizes are
checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
`to_pixels` turns an image into what the network sees: the central square at 32x32, uint8 CHW. This
module needs only Pillow and numpy, so an exported model classifies images on a device without torch
(core.deploy.onnx_model).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.design.spec import IMAGE_SIZE
from core.errors import StudioError

MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes to ~150 MB; larger ones are refused unread
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
WHITE = (255, 255, 255, 255)  # transparent pixels become white, as a browser shows them on a page
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageError(StudioError, ValueError):
    """A file that cannot be used as an image; the message names the file."""


def open_image(source: bytes | str | Path, name: str = "") -> Image.Image:
    """Decode an image file (its bytes or its path) to RGB, with EXIF orientation applied.

    `name` is how error messages call the file (defaults to the path).
    """
    if isinstance(source, (str, Path)):
        name = name or str(source)
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty")
        fp = path
    else:
        name = name or "the image"
        if len(source) == 0:
            raise ImageError(f"{name}: the file is empty")
        fp = io.BytesIO(source)

    try:
        # Pillow warns, rather than refuses, between its own limit and twice that: make it refuse
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:  # reads the header only
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{name}: {width}x{height} pixels is too large to decode safely "
                                     f"(more than {MAX_PIXELS:,} pixels); resize it first")
                img.load()  # the first frame of an animation
                upright = ImageOps.exif_transpose(img)  # a detached copy, rotated as the camera was held
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or not in a format that can be read; use {FORMATS}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(f"{name}: too large to decode safely (more than {MAX_PIXELS:,} pixels); "
                         f"resize it first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # how Pillow reports damaged data
        raise ImageError(f"{name}: the image data is damaged or truncated ({e})") from None
    return _to_rgb(upright, name)


def _to_rgb(img: Image.Image, name: str = "the image") -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency composited on white, high bit depths scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    try:
        if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{name}: colour mode {img.mode} cannot be converted to RGB ({e})") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """Grayscale with more than 8 bits as mode L, keeping its contrast (Pillow's own convert clips at 255).

    16-bit images map 0..65535 to 0..255; 32-bit integer and float ones, whose range is not fixed,
    are stretched from their darkest to their brightest pixel.
    """
    if img.mode.startswith("I;16"):
        img, (lo, hi) = img.convert("I"), (0, 65535)
    else:
        lo, hi = img.getextrema()
    scale = 255 / max(hi - lo, 1e-12)
    return img.point(lambda v: (v - lo) * scale + 0.5).convert("L")  # + 0.5: round, not truncate


def to_pixels(img: Image.Image) -> np.ndarray:
    """uint8 (3, 32, 32): the central square, resized with antialiasing; a 32x32 image passes unchanged."""
    img = _to_rgb(img)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    # crop first: resizing with a box would let the filter reach pixels outside the square
    square = img.crop((left, top, left + side, top + side))
    small = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)  # antialiased when shrinking
    return np.ascontiguousarray(np.asarray(small).transpose(2, 0, 1))

