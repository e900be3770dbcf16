"""Where training data comes from, without reading it (and without torch, so a page can ask at once).

core.data.datasets reads what these name.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import StudioError

BUILTIN = "builtin"
BUILTIN_ARCHIVE = Path(__file__).parent / "assets" / "cifar10-slice.tar.gz"
BUILTIN_IMAGES = (5_000, 1_000)      # (train, test) in the built-in slice
CIFAR10_IMAGES = (50_000, 10_000)    # (train, test) in a full copy
CIFAR10_DOWNLOAD_BYTES = 170_498_071  # torchvision's cifar-10-python.tar.gz
DEFAULT_DIR = Path("data")  # relative to the working directory, like a --data argument
TORCHVISION_DIR = "cifar-10-batches-py"
CHOICES = (BUILTIN, "path", "download")  # the Train page's ways to pick data
# copies of CIFAR-10 known by their archive's sha256: a figure must say which copy it comes from, and a JPEG
# copy scores lower than the lossless original (../shared/cifar10/README.md)
JPEG_COPY = "CIFAR-10, JPEG copy (quality 75, 4:2:0)"
KNOWN_COPIES = {"d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965": JPEG_COPY}
SHARED_COPY_NAME = "../shared/cifar10/cifar10-jpg.tar.gz"  # the JPEG copy, where the course keeps it: beside the repo
SHARED_COPY = (Path(__file__).resolve().parents[2] / SHARED_COPY_NAME).resolve()

LAYOUTS = ("a folder holding cifar-10-batches-py/ (torchvision's CIFAR-10), or class folders train/<class>/ and "
           "test/<class>/ as a folder, .tar.gz, .tgz, .tar or .zip")
HOW_TO_GET_DATA = (f"Set --data or CIFAR10_DATA to such a folder or archive (the JPEG copy of CIFAR-10 is at "
                   f"{SHARED_COPY_NAME}), or use --data builtin for the slice in the repo")


class DataError(StudioError, ValueError):
    """Data that is missing, malformed or refused; the message says where it looked and what to do."""


def resolve_data(data: str | None) -> str:
    """The data to use, as "builtin" or an absolute path: `data` if given, else $CIFAR10_DATA, else ./data if
    it exists, else the built-in slice."""
    choice = data or os.environ.get("CIFAR10_DATA") or (str(DEFAULT_DIR) if DEFAULT_DIR.exists() else BUILTIN)
    return BUILTIN if choice == BUILTIN else str(Path(choice).expanduser().resolve())


def suggested_data() -> str:
    """The copy to offer where a path to CIFAR-10 is asked for: CIFAR10_DATA or ./data when set up (resolve_data),
    else the JPEG copy beside the repo when there is one, else "" (nothing to offer)."""
    resolved = resolve_data(None)
    if resolved != BUILTIN:
        return resolved
    return str(SHARED_COPY) if SHARED_COPY.exists() else ""


def chosen_data(choice: str, path: str, download_dir: str) -> tuple[str | None, str | None]:
    """(the data a run would train on, as load_dataset takes it, or None; what is wrong when None), for the
    built-in slice, a copy at `path`, or a download into `download_dir`."""
    if choice == BUILTIN:
        return BUILTIN, None
    if choice == "path":
        if not path.strip():
            return None, "Give the path of a CIFAR-10 copy, or pick the built-in slice."
        found = resolve_data(path.strip())
        return (found, None) if Path(found).exists() else (None, f"{found}: no such file or folder.")
    folder = resolve_data(download_dir)
    if (Path(folder) / TORCHVISION_DIR).is_dir():
        return folder, None
    return None, "Download CIFAR-10 first, or pick another source."


def copy_name(source: str | None, sha256: str | None = None) -> str:
    """Which CIFAR-10 a run's figures come from, for people: by the archive's sha256 where a run's record has it,
    else by the data's description (core.data.datasets' `source`, or a path)."""
    source = source or ""
    if sha256 in KNOWN_COPIES:
        return KNOWN_COPIES[sha256]
    if source in (BUILTIN, "") or source.startswith("built-in slice"):
        return "CIFAR-10, built-in slice of the JPEG copy (quality 75)"
    if "lossless" in source:
        return "CIFAR-10 (torchvision, lossless)"
    if "cifar10-jpg" in source:
        return JPEG_COPY
    return f"CIFAR-10 as class folders ({Path(source.split(' (')[0]).name})"


def test_set_name(source: str, images: int) -> str:
    """A test split in words and without this machine's paths, for what travels with a run (its familiarity
    thresholds, an ONNX file): "CIFAR-10, JPEG copy (quality 75, 4:2:0): its 10,000 test images, cifar10-jpg.tar.gz"."""
    copy, file = copy_name(source), Path(source.split(" (")[0]).name
    return f"{copy}: its {images:,} test images" + ("" if file in copy else f", {file}")


def image_counts(data: str | None) -> tuple[int, int]:
    """(train, test) images a run on `data` goes through per epoch: the slice's, else a full copy's."""
    return BUILTIN_IMAGES if data == BUILTIN else CIFAR10_IMAGES
