"""CIFAR-10, or any images in class folders, as uint8 tensors in memory.

Which data (`resolve_data`): the path or "builtin" given, else $CIFAR10_DATA, else ./data if it
exists, else the built-in slice in core/data/assets. Two layouts are read:

  * torchvision's: a folder holding `cifar-10-batches-py/` (the original, lossless CIFAR-10), read by
    torchvision itself; `download=True` fetches it into that folder.
  * class folders: `train/<class>/*` and `test/<class>/*`, as a folder or a .tar.gz, .tgz, .tar or .zip
    of one, wrapped in a top folder or not. Images may have any format, size or mode: `core.data.images`
    makes each RGB 32x32. Archives are read member by member in memory, never extracted, and refused
    when they hold more than a dataset could (see MAX_*).

Decoding 60,000 JPEGs takes seconds, so the decoded tensors are cached with safetensors (never pickle)
under $RESNET_STUDIO_CACHE or ~/.cache/resnet-studio, keyed by the path and the size and modification
time of every file in it: every load after the first reads the cache.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.data.archives import ImageFile, image_files
from core.data.cache import cached
from core.data.images import ImageError, open_image, to_pixels
from core.data.sources import (BUILTIN, BUILTIN_ARCHIVE, DEFAULT_DIR, HOW_TO_GET_DATA, LAYOUTS, TORCHVISION_DIR,
                               DataError, resolve_data)
from core.design.spec import IMAGE_SIZE, IN_CHANNELS


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


DECODE_CHUNK = 1000  # images per task of a decoding worker


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, 3, 32, 32) and their class indices as int64 (N,), on the CPU."""
    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        n = len(self.labels)
        if (self.images.dtype != torch.uint8 or self.images.shape != (n, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
                or self.labels.dtype != torch.int64 or self.labels.shape != (n,)):
            raise ValueError(f"Split wants uint8 images (N, 3, 32, 32) and int64 labels (N,), got "
                             f"{self.images.dtype} {tuple(self.images.shape)} and "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # where it came from, in words, for people and for the run record


def load_dataset(data: str | None = None, download: bool = False) -> Dataset:
    """The train and test splits of `data` (see `resolve_data`).

    download: fetch torchvision's CIFAR-10 into the folder `data` names, unless it is there already
    (into ./data when no data is named).
    """
    choice = resolve_data(data)
    if download and choice == BUILTIN and data != BUILTIN:
        choice = str(DEFAULT_DIR.resolve())  # where the next load without arguments looks
    path = BUILTIN_ARCHIVE if choice == BUILTIN else Path(choice)
    root = _torchvision_root(path, download)
    if root is not None:
        tensors, classes = cached(root / TORCHVISION_DIR, "torchvision", lambda: _read_torchvision(root, download))
        source = f"{root} (torchvision CIFAR-10, lossless)"
    else:
        _check_exists(path)
        tensors, classes = cached(path, "dataset", lambda: _read_dataset(path))
        source = f"{path} (class folders)"
    train = Split(tensors["train_images"], tensors["train_labels"])
    test = Split(tensors["test_images"], tensors["test_labels"])
    if choice == BUILTIN:
        source = f"built-in slice of the JPEG copy ({len(train):,} train / {len(test):,} test)"
    return Dataset(train, test, classes, source)


def load_class_folders(path: str | Path, classes: Sequence[str] | None = None) -> tuple[Split, tuple[str, ...]]:
    """A labelled set of images in class folders, e.g. a custom test set, and its class names.

    `<class>/<image>` in a folder or archive, under a top folder or not; when a dataset with `test/` is
    given, its test split. Without `classes`, the class names are the folder names, sorted; with them,
    labels index `classes` (so they match a model trained on them), `classes` is what is returned, and
    a folder that is not one of them is an error.
    """
    path = Path(path).expanduser().resolve()
    _check_exists(path)
    names = tuple(classes) if classes is not None else None
    tensors, names = cached(path, f"class-folders {json.dumps(names)}", lambda: _read_class_folders(path, names))
    return Split(tensors["images"], tensors["labels"]), names


def split_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, validation): `fraction` of every class held out, the same images for the same seed."""
    if not 0 <= fraction < 1:
        raise DataError(f"validation fraction: {fraction} is out of range; allowed: 0 (none) to below 1")
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for label in split.labels.unique():  # sorted, so the draws happen in the same order every time
        members = (split.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out.append(members[:round(len(members) * fraction)])
    val = torch.cat(held_out).sort().values
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[val] = False
    rest = keep.nonzero().flatten()
    return Split(split.images[rest], split.labels[rest]), Split(split.images[val], split.labels[val])


# ---- torchvision's layout -------------------------------------------------------------------------


def _torchvision_root(path: Path, download: bool) -> Path | None:
    """The folder holding cifar-10-batches-py/ if `path` is in torchvision's layout (or is to be, by download)."""
    if path.name == TORCHVISION_DIR and path.is_dir():
        return path.parent
    if (path / TORCHVISION_DIR).is_dir() or (download and not path.is_file()):
        return path
    return None


def _cifar10_files():
    """torchvision's CIFAR-10, checking that its files exist rather than their md5 sums, so that a copy
    re-pickled elsewhere loads too (a download is still checked against torchvision's md5).

    The batches are pickles, which can run code when loaded: this layout is only read from a path the
    user names, never from an upload (uploads are read as class folders).
    """
    # imported here: torchvision's import (its models, ops and torch._dynamo) takes ~1.4 s, which every
    # training process would pay, and only this layout needs it
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10Files


def _read_torchvision(root: Path, download: bool) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    folder = root / TORCHVISION_DIR
    files = _cifar10_files()
    created = download and not root.exists()
    try:
        splits = {"train": files(root, train=True, download=download), "test": files(root, train=False)}
    except OSError as e:  # no network is a URLError, an OSError
        if created:  # left empty, ./data would pass for a copy: runs without --data would look there
            with contextlib.suppress(OSError):
                root.rmdir()
        action = "download CIFAR-10 into" if download else "read"
        raise DataError(f"{root}: could not {action} it ({e}). {HOW_TO_GET_DATA}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise DataError(f"{folder}: not a complete copy of torchvision's CIFAR-10 ({e}); it should hold "
                        f"data_batch_1 to data_batch_5, test_batch and batches.meta. {HOW_TO_GET_DATA}") from None
    classes = tuple(splits["train"].classes)
    tensors = {}
    for name, split in splits.items():
        labels = torch.tensor(split.targets, dtype=torch.int64)
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
            raise DataError(f"{folder}: {name} labels go beyond the {len(classes)} classes of batches.meta")
        tensors[f"{name}_images"] = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # stored HWC
        tensors[f"{name}_labels"] = labels
    return tensors, classes


# ---- class folders --------------------------------------------------------------------------------


def _read_dataset(path: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    files = image_files(path)
    roots = _class_folders(files)
    # the shallowest train/ with a test/ beside it: train/, or <top folder>/train/
    train_roots = sorted((r for r in roots if r[-1:] == ("train",) and r[:-1] + ("test",) in roots), key=len)
    if not train_roots:
        raise DataError(f"{path}: no train/<class>/ and test/<class>/ folders of images in it ({_found(roots)}). "
                        f"Accepted: {LAYOUTS}. {HOW_TO_GET_DATA}")
    train_root = train_roots[0]
    test_root = train_root[:-1] + ("test",)
    classes = tuple(sorted(roots[train_root]))
    train_order, train_labels = _in_class_order(files, roots[train_root], classes, f"{path}: train/")
    test_order, test_labels = _in_class_order(files, roots[test_root], classes, f"{path}: test/")
    images = _decode([files[i] for i in train_order + test_order], path)
    train_images, test_images = images[:len(train_order)].clone(), images[len(train_order):].clone()  # own storage
    return {"train_images": train_images, "train_labels": torch.tensor(train_labels, dtype=torch.int64),
            "test_images": test_images, "test_labels": torch.tensor(test_labels, dtype=torch.int64)}, classes


def _read_class_folders(path: Path, classes: tuple[str, ...] | None) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    files = image_files(path)
    roots = _class_folders(files)
    test_roots = sorted((r for r in roots if r[-1:] == ("test",)), key=len)
    if len(roots) > 1 and test_roots:  # a whole dataset: its test split
        roots = {test_roots[0]: roots[test_roots[0]]}
    if len(roots) != 1:
        raise DataError(f"{path}: expected one set of class folders, <class>/<image>; {_found(roots)}. "
                        f"Give a folder, .zip, .tar.gz or .tar holding just the class folders")
    (by_class,) = roots.values()
    classes = classes or tuple(sorted(by_class))
    order, labels = _in_class_order(files, by_class, classes, f"{path}:")
    return {"images": _decode([files[i] for i in order], path),
            "labels": torch.tensor(labels, dtype=torch.int64)}, classes


def _class_folders(files: list[ImageFile]) -> dict[tuple[str, ...], dict[str, list[int]]]:
    """Indices of the files, by the folder holding their class folder (`<root>/<class>/<image>`), then by class."""
    roots = defaultdict(lambda: defaultdict(list))
    for i, (parts, _) in enumerate(files):
        if len(parts) >= 2:  # an image outside any class folder has no label: left out
            roots[parts[:-2]][parts[-2]].append(i)
    return roots


def _in_class_order(files: list[ImageFile], by_class: dict[str, list[int]], classes: Sequence[str],
                    where: str) -> tuple[list[int], list[int]]:
    """File indices ordered by class, then by path (whatever order the archive had), and their labels."""
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise DataError(f"{where} unknown class folder(s) {', '.join(unknown)}; expected folders named "
                        f"from: {', '.join(classes)}. Rename or remove them")
    order, labels = [], []
    for label, name in enumerate(classes):
        members = sorted(by_class.get(name, []), key=lambda i: files[i][0])
        order += members
        labels += [label] * len(members)
    return order, labels


def _found(roots: dict[tuple[str, ...], dict[str, list[int]]]) -> str:
    if not roots:
        return "found no images in class folders"
    folders = sorted("/".join(root + (name,)) + "/" for root, by_class in roots.items() for name in by_class)
    more = f" and {len(folders) - 6} more" if len(folders) > 6 else ""
    return f"found images in {', '.join(folders[:6])}{more}"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Accepted: {LAYOUTS}. {HOW_TO_GET_DATA}")


# ---- decoding -------------------------------------------------------------------------------------


def _decode(files: list[ImageFile], where: Path) -> torch.Tensor:
    """(N, 3, 32, 32) uint8, in parallel worker processes when there is more than a chunk of work."""
    named = [("/".join(parts), data) for parts, data in files]
    chunks = [named[i:i + DECODE_CHUNK] for i in range(0, len(named), DECODE_CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks))
    try:
        if workers > 1:
            # one torch thread per worker, as DataLoader does: forked OpenMP pools can hang
            with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                decoded = list(pool.map(_decode_chunk, chunks))
        else:
            decoded = [_decode_chunk(chunk) for chunk in chunks]
    except ImageError as e:
        raise DataError(f"{where}: {e}; remove or replace that file") from None
    return torch.cat([torch.from_numpy(chunk) for chunk in decoded])


def _decode_chunk(named: list[tuple[str, bytes]]) -> np.ndarray:
    # numpy, not a tensor: it comes back from a worker by value, not through shared memory
    return np.stack([to_pixels(open_image(data, name)) for name, data in named])
