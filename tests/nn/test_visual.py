"""Pictures for people: thumbnails, the network's input made visible, Grad-CAM overlays."""
import numpy as np
import torch
from PIL import Image

from core.nn.visual import cam_overlay, enlarge, heat_colours, thumbnail


def test_a_thumbnail_fits_its_square_keeping_the_aspect_and_never_grows():
    assert thumbnail(Image.new("RGB", (4000, 3000))).shape == (144, 192, 3)
    assert thumbnail(Image.new("RGB", (300, 600)), 100).shape == (100, 50, 3)  # arrays are (height, width)
    assert thumbnail(Image.new("RGB", (32, 32))).shape == (32, 32, 3)


def test_enlarge_turns_every_pixel_into_a_square_of_it():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    big = enlarge(image, 6)
    assert big.shape == (192, 192, 3) and big.dtype == np.uint8
    assert (big[6 * 5:6 * 6, 6 * 7:6 * 8] == image[:, 5, 7].numpy()).all()


def test_heat_runs_from_dark_blue_through_green_to_red():
    coldest, cold, middle, hot = heat_colours(torch.tensor([0.0, 0.15, 0.5, 1.0]))
    assert coldest.sum() < 0.5
    assert cold[2] > 2 * cold[0]
    assert middle[1] > 0.9
    assert hot[0] > 3 * hot[2] and hot[0] > hot[1]
    assert heat_colours(torch.rand(100)).min() >= 0 and heat_colours(torch.rand(100)).max() <= 1


def test_the_overlay_blends_the_heat_map_over_the_enlarged_image():
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    cam = torch.zeros(32, 32)
    cam[:, 16:] = 1
    overlay = cam_overlay(image, cam, 4)
    assert overlay.shape == (128, 128, 3) and overlay.dtype == np.uint8
    assert overlay[:, :40, 0].mean() < overlay[:, 90:, 0].mean()  # hot on the right, where the map is
    assert (cam_overlay(image, cam, 4, opacity=0) == enlarge(image, 4)).all()
