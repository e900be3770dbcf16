"""Weights trained elsewhere, as a run: a PyTorch `.pt` state_dict matched to a design.

The file is read with `torch.load(..., weights_only=True)`, whose unpickler builds only tensors and plain
containers: a pickle that names any other callable (a `__reduce__` payload, a whole pickled `nn.Module`)
is refused before anything in it runs. Keys in kuangliu's pytorch-cifar layout (`conv1`, `bn1`,
`layer1.0.conv1`, `layer1.0.shortcut.0`, `linear`), which the seed projects follow, are renamed to ours;
so are DataParallel's `module.` and torch.compile's `_orig_mod.` prefixes, and the `{"net": ...}` dict
kuangliu's training script saves. The result is a finished run marked imported, with a best checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import time
from pathlib import Path

import torch

from core.data.augment import MEAN, STD
from core.data.datasets import CLASSES
from core.design.config import RunConfig
from core.errors import StudioError
from core.nn.checkpoint import save_checkpoint
from core.nn.model import build_model
from core.nn.platform import torch_facts
from core.runs.run import Run, create_run

WRAPPERS = ("state_dict", "model_state_dict", "net", "model")  # where training scripts nest the weights
PREFIXES = ("module.", "_orig_mod.")
# kuangliu's names -> ours; inside a block the names are the same (conv1, bn1, conv2, bn2, shortcut.0/1)
KUANGLIU = [(re.compile(r"^conv1\."), "stem.0."), (re.compile(r"^bn1\."), "stem.1."),
            (re.compile(r"^layer(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}."),
            (re.compile(r"^linear\."), "fc.")]
OURS = [(re.compile(r"^stem\.0\."), "conv1."), (re.compile(r"^stem\.1\."), "bn1."),
        (re.compile(r"^stages\.(\d+)\."), lambda m: f"layer{int(m.group(1)) + 1}."), (re.compile(r"^fc\."), "linear.")]
# the per-channel (mean, std) on [0, 1] pixels a network may have been trained with
NORMALIZATIONS = {"cifar10": (MEAN, STD),                                   # this studio's, the usual one
                  "kuangliu": (MEAN, (0.2023, 0.1994, 0.2010)),             # pytorch-cifar's main.py
                  "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}               # plain [0, 1] pixels
UNSAFE = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights-only unpickler names what it refused
CODE_MODULES = {"builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "runpy",
                "importlib", "pty", "code", "codecs", "marshal", "types", "ctypes", "pickle", "operator"}


class WeightsError(StudioError):
    """A weights file that cannot be imported; the message says why and what to do."""


def read_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.pt` file's bytes, without running anything they hold."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = UNSAFE.search(str(e))
        if refused is None:
            raise WeightsError(f"{name}: not a PyTorch weights file that can be read safely (it holds something "
                               f"other than tensors, or is damaged)") from None
        what = refused.group(1)
        if what.split(".")[0] in CODE_MODULES:
            raise WeightsError(f"{name}: asks to run {what} when it is loaded: it holds code. Refused; nothing "
                               f"in it ran. Only a state_dict of tensors can be imported") from None
        raise WeightsError(f"{name}: holds a whole pickled object ({what}), a model rather than its weights, which "
                           f"only running code from the file could rebuild. Refused; nothing in it ran. Save "
                           f"model.state_dict() instead: torch.save(model.state_dict(), 'weights.pt')") from None
    except Exception:  # torch.load's ways of failing on a file that is not a checkpoint vary by version
        # not a zip archive: torch.load reads it as an old-style pickle, and the unpickler takes its bytes for
        # opcodes; text such as "this is ..." fails inside the unpickler (IndexError: pop from empty list),
        # which says nothing to a user
        kind = "a zip archive, but not one torch.save wrote, or a damaged one" if data[:4] == b"PK\x03\x04" else \
            "neither the zip archive torch.save writes nor an older PyTorch pickle: text, another format, or a " \
            "damaged or cut-short download"
        raise WeightsError(f"{name}: not a PyTorch weights file: it is {kind}. Save the weights with "
                           f"torch.save(model.state_dict(), 'weights.pt') and import that file") from None
    return _state_dict(loaded, name)


def read_file(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{name}: no such file") from None
    except OSError as e:
        raise WeightsError(f"{name}: cannot read it ({e})") from None


def _state_dict(loaded, name: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        nested = next((loaded[k] for k in WRAPPERS if isinstance(loaded.get(k), dict)), None)
        loaded = nested if nested is not None else loaded
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{name}: holds {type(loaded).__name__}, not a state_dict (a dict of tensor names to "
                           f"tensors)")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{name}: its entry {key!r} is a {type(value).__name__}, not a tensor; "
                               f"save model.state_dict()")
    return dict(loaded)


def rename(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Our names for the file's tensors, and whether they came in kuangliu's layout."""
    def strip(key: str) -> str:
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        return key

    weights = {strip(k): v for k, v in weights.items()}
    kuangliu = any(k.startswith(("layer1.", "linear.")) for k in weights)
    return ({_apply(KUANGLIU, k): v for k, v in weights.items()} if kuangliu else weights), kuangliu


def _apply(rules, key: str) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key, count=1)
    return key


def match(weights: dict[str, torch.Tensor], design: RunConfig, name: str) -> dict[str, torch.Tensor]:
    """The file's tensors as our model's state_dict for `design`, or an error naming the first mismatch."""
    ours, kuangliu = rename(weights)
    expected = build_model(design.arch).state_dict()

    def called(key: str) -> str:  # a tensor as the file names it
        return f"'{_apply(OURS, key)}'" if kuangliu else f"'{key}'"

    matched = {}
    for key, want in expected.items():
        have = ours.get(key)
        if have is None and key.endswith("num_batches_tracked"):
            have = torch.zeros_like(want)  # a counter only training uses; older files lack it
        if have is None:
            raise WeightsError(f"{name}: has no tensor {called(key)}, which the design needs (shape "
                               f"{tuple(want.shape)}); the design does not match the network that was saved")
        if have.shape != want.shape:
            raise WeightsError(f"{name}: tensor {called(key)} has shape {tuple(have.shape)}, the design needs "
                               f"{tuple(want.shape)}; the design does not match the network that was saved")
        matched[key] = have.to(want.dtype)
    unexpected = [k for k in ours if k not in expected]
    if unexpected:
        raise WeightsError(f"{name}: tensor {called(unexpected[0])} has no place in the design "
                           f"({len(unexpected)} such tensor{'s' if len(unexpected) > 1 else ''}); the design does "
                           f"not match the network that was saved")
    return matched


def import_weights(source: bytes | Path, name: str, design: RunConfig, run_dir: str | Path,
                   mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
                   classes: tuple[str, ...] = CLASSES) -> Run:
    """A new finished run at `run_dir` holding the `.pt` file's weights as its best checkpoint.

    mean, std: the normalisation the weights were trained with, on [0, 1] pixels (see NORMALIZATIONS).
    """
    data = source if isinstance(source, bytes) else read_file(source, name)
    return import_tensors(read_weights(data, name), hashlib.sha256(data).hexdigest(), name, design, run_dir, mean,
                          std, classes)


def import_tensors(tensors: dict[str, torch.Tensor], sha256: str, name: str, design: RunConfig, run_dir: str | Path,
                   mean: tuple[float, ...], std: tuple[float, ...], classes: tuple[str, ...]) -> Run:
    """A new finished run at `run_dir` holding `tensors` (read from `name`, whose bytes hash to `sha256`) as its
    best checkpoint, with a record saying where they came from."""
    if design.arch.num_classes != len(classes):
        raise WeightsError(f"the design has {design.arch.num_classes} classes, but {len(classes)} class names "
                           f"are given")
    if min(std) <= 0:
        raise WeightsError(f"std {list(std)}: every channel's std must be above 0")
    weights = match(tensors, design, name)
    run = Run.at(run_dir)
    run = create_run(design, run.name, run.dir.parent, origin=f"imported from {name}")
    meta = {"spec": design.arch.to_dict(), "classes": list(classes), "mean": list(mean), "std": list(std),
            "epoch": None, "eval_acc": None, "imported_from": name}
    save_checkpoint(run.checkpoints, "best", weights, meta)
    run.record_import(torch_facts(torch.device("cpu")), sha256)
    run.update_status(state="finished", ended=time.time(), imported_from=name)
    return run
