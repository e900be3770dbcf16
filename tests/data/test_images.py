"""Decoding user images: every format and colour mode, EXIF rotation, bit depth, and clear refusals."""
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.images import MAX_PIXELS, ImageError, open_image, to_pixels


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def pixel(img: Image.Image, xy=(0, 0)) -> tuple:
    return img.getpixel(xy)


RED = (200, 30, 40)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_rgb(fmt):
    img = open_image(encode(Image.new("RGB", (40, 24), RED), fmt), f"x.{fmt.lower()}")
    assert img.mode == "RGB" and img.size == (40, 24)
    assert np.abs(np.subtract(pixel(img, (20, 12)), RED)).max() <= 12  # lossy formats are close


@pytest.mark.parametrize("img, fmt, options, expected", [
    (Image.new("L", (8, 8), 90), "PNG", {}, (90, 90, 90)),
    (Image.new("1", (8, 8), 1), "PNG", {}, (255, 255, 255)),
    (Image.new("LA", (8, 8), (0, 0)), "PNG", {}, (255, 255, 255)),            # transparent: white
    (Image.new("LA", (8, 8), (0, 255)), "PNG", {}, (0, 0, 0)),
    (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", {}, (255, 255, 255)),
    (Image.new("RGBA", (8, 8), (0, 0, 255, 128)), "PNG", {}, (127, 127, 255)),  # half over white
    (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "TIFF", {}, (255, 0, 0)),
    (Image.new("L", (8, 8), 7), "PNG", {"transparency": 7}, (255, 255, 255)),
])
def test_colour_modes(img, fmt, options, expected):
    out = open_image(encode(img, fmt, **options), "x")
    assert out.mode == "RGB"
    assert np.abs(np.subtract(pixel(out), expected)).max() <= 1


def test_cmyk_jpeg():
    out = open_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "x.jpg")
    assert np.abs(np.subtract(pixel(out, (8, 8)), (255, 0, 0))).max() <= 8


def test_palette_with_and_without_transparency():
    img = Image.new("P", (8, 8), 3)
    img.putpalette([10, 20, 30] * 256)
    assert pixel(open_image(encode(img, "PNG"), "p.png")) == (10, 20, 30)
    assert pixel(open_image(encode(img, "PNG", transparency=3), "p.png")) == (255, 255, 255)
    assert pixel(open_image(encode(img, "GIF", transparency=3), "p.gif")) == (255, 255, 255)


def test_16_bit_keeps_its_contrast():
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    for fmt in ("PNG", "TIFF"):
        data = encode(Image.fromarray(ramp), fmt)
        assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored with 16 bits
        out = np.asarray(open_image(data, f"x.{fmt}"))[..., 0].astype(int)
        expected = np.round(ramp / 257)  # 0..65535 -> 0..255, not clipped at 255
        assert np.abs(out - expected).max() <= 1
        assert out.min() == 0 and out.max() == 255 and 100 < np.median(out) < 156


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert pixel(open_image(buf.getvalue(), "anim.gif")) == (255, 0, 0)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    out = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "photo.jpg")
    assert out.size == (20, 40)
    top, bottom = pixel(out, (10, 5)), pixel(out, (10, 35))
    assert top[0] > 200 and top[2] < 60      # the left edge is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_reads_from_a_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 8), RED).save(path)
    assert pixel(open_image(path)) == RED and pixel(open_image(str(path))) == RED


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (8_000, 8_000), (10_000, 10_000)])
def test_bomb_is_refused_from_its_header(width, height):
    assert width * height > MAX_PIXELS
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak out
        with pytest.raises(ImageError, match=r"bomb\.png: .*too large"):
            open_image(png_header_only(width, height), "bomb.png")
    assert time.perf_counter() - start < 0.5  # decoding 10^10 pixels would take minutes


@pytest.mark.parametrize("data, match", [
    (b"", "the file is empty"),
    (b"just some notes, not an image\n", "not an image"),
    (encode(Image.new("RGB", (64, 64), RED), "JPEG")[:300], "damaged or truncated"),
])
def test_bad_bytes_name_the_file(data, match):
    with pytest.raises(ImageError, match=f"upload.png: .*{match}"):
        open_image(data, "upload.png")


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("a text file with an image's name")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        open_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match="empty.jpg: the file is empty"):
        open_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="missing.png: no such file"):
        open_image(tmp_path / "missing.png")


def test_to_input_passes_32x32_through_bit_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(to_pixels(Image.fromarray(pixels)))
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1))


def test_to_input_center_crops_then_resizes():
    img = Image.new("RGB", (128, 64), (255, 0, 0))   # wide: red sides around a blue centre square
    img.paste((0, 0, 255), (32, 0, 96, 64))
    x = torch.from_numpy(to_pixels(img))
    assert x.shape == (3, 32, 32)
    assert (x[2] == 255).all() and (x[0] == 0).all()  # only the centre square is left


def test_to_input_antialiases():
    checkerboard = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel black and white
    x = torch.from_numpy(to_pixels(Image.fromarray(checkerboard).convert("RGB"))).float()
    assert (x - 127.5).abs().max() < 20  # averaged to grey; plain subsampling would give black or white


def test_to_input_accepts_other_modes():
    assert torch.from_numpy(to_pixels(Image.new("LA", (50, 40), (0, 0)))).eq(255).all()  # transparent: white
