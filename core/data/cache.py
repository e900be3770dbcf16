"""Decoded datasets cached with safetensors (never pickle) under $RESNET_STUDIO_CACHE or
~/.cache/resnet-studio, keyed by the path and the size and modification time of every file in it: every
load after the first reads the cache."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.files import cache_dir


CACHE_FORMAT = 1     # part of every cache key: bump it when decoding changes


def cached(path: Path, kind: str, read: Callable[[], tuple[dict[str, torch.Tensor], tuple[str, ...]]]
            ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """What `read()` returns, from the cache when `path` has not changed since it was last read."""
    if path.exists():  # not yet there when torchvision is about to download it
        hit = _read_cache(_cache_file(path, kind))
        if hit is not None:
            return hit
    tensors, classes = read()
    _write_cache(_cache_file(path, kind), tensors, classes)
    return tensors, classes


def _cache_file(path: Path, kind: str) -> Path:
    """<cache>/<source>-<state>.safetensors: one source per path and kind, its state from every file in it.

    Plain strings and os.stat, not Path objects: a 60,000-file folder is stat'ed in a fraction of a second.
    """
    files = [str(path)] if path.is_file() else [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    lines = []
    for file in files:
        with contextlib.suppress(OSError):  # a broken link: nothing to read there anyway
            info = os.stat(file)
            lines.append(f"{file}\0{info.st_size}\0{info.st_mtime_ns}\n")
    state = hashlib.sha256(f"format {CACHE_FORMAT}\n{''.join(sorted(lines))}".encode()).hexdigest()[:16]
    source = hashlib.sha256(f"{path}\0{kind}".encode()).hexdigest()[:16]
    return cache_dir() / f"{source}-{state}.safetensors"


def _read_cache(file: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]] | None:
    try:
        with safe_open(file, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, tuple(json.loads(f.metadata()["classes"]))
    except (OSError, SafetensorError, KeyError, TypeError, ValueError):
        return None  # absent or unreadable: read the data again


def _write_cache(file: Path, tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> None:
    """Write atomically (a temporary file renamed into place) and drop this source's older entries;
    an unwritable cache directory only means reading the data again next time."""
    temporary = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as f:
            temporary = Path(f.name)
        save_file(tensors, temporary, metadata={"classes": json.dumps(classes)})
        os.replace(temporary, file)
        source = file.name.split("-")[0]
        for old in file.parent.glob(f"{source}-*.safetensors"):
            if old != file:
                old.unlink(missing_ok=True)
    except (OSError, SafetensorError):
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
