"""What a GPU session is given, checked on any machine: our data in airbench's format."""
import torch

from core.data.datasets import CLASSES, load_dataset
from scripts.prepare_gpu_data import write_airbench_data


def test_airbench_files_hold_our_images_in_its_layout(tmp_path):
    folder = write_airbench_data("builtin", tmp_path)
    ours = load_dataset("builtin")
    for name, split in (("train", ours.train), ("test", ours.test)):
        data = torch.load(folder / f"{name}.pt")  # weights_only, as airbench 0.1.8 loads it on torch >= 2.6
        images = data["images"]
        assert images.dtype == torch.uint8 and images.shape == (len(split), 32, 32, 3)
        assert torch.equal(images.permute(0, 3, 1, 2), split.images)  # what airbench's CifarLoader does
        assert data["labels"].dtype == torch.int64 and torch.equal(data["labels"], split.labels)
        assert data["classes"] == list(CLASSES)
