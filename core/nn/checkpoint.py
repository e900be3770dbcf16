"""Checkpoints as safetensors + JSON: loading one never unpickles anything.

    checkpoints/<tag>.safetensors         the weights to predict with (EMA weights when EMA is on)
    checkpoints/<tag>.json                metadata: spec, classes, normalisation, epoch, accuracy, ...
    checkpoints/<tag>.state.safetensors   what resuming needs: raw weights, optimizer and EMA state

Each file is replaced atomically. The three files of one save share a random `generation`,
written into each; the JSON is written last, so a save cut short is detected, not half-loaded.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from core.design.spec import ArchSpec, SpecError
from core.errors import StudioError
from core.files import write_atomic, write_json

TAGS = ("best", "last")
FORMAT = 1


class CheckpointError(StudioError):
    pass


@dataclass
class Checkpoint:
    spec: ArchSpec
    weights: dict[str, torch.Tensor]
    meta: dict          # classes, mean, std, epoch, eval_acc, ...

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], generation: str, extra: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"generation": generation, **({"json": json.dumps(extra)} if extra else {})}
    write_atomic(path, save_safetensors(tensors, metadata=header))


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    try:
        tensors = load_safetensors(data)
        # safetensors has no public call for the header of in-memory bytes: read its JSON directly
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the checkpoint is damaged") from None
    return tensors, header


def save_checkpoint(folder: Path, tag: str, weights: dict[str, torch.Tensor], meta: dict,
                    train_state: dict[str, torch.Tensor] | None = None, train_meta: dict | None = None,
                    half: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    generation = secrets.token_hex(8)
    if half:  # a shipped example: floats to fp16, half the size, same predictions to within rounding
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    if train_state is not None:
        _save_tensors(folder / f"{tag}.state.safetensors", train_state, generation, train_meta)
    _save_tensors(folder / f"{tag}.safetensors", weights, generation)
    write_json(folder / f"{tag}.json", {"format": FORMAT, "generation": generation,
                                        "has_train_state": train_state is not None, **meta})


def read_meta(folder: Path, tag: str) -> dict:
    path = folder / f"{tag}.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no '{tag}' checkpoint yet (it is written after the first epoch)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "spec" not in meta:
        raise CheckpointError(f"{path}: not a ResNet Studio checkpoint (format {FORMAT})")
    return meta


def load_checkpoint(folder: Path, tag: str = "best") -> Checkpoint:
    if tag not in TAGS:
        raise CheckpointError(f"checkpoint {tag!r}: choose one of {', '.join(TAGS)}")
    meta = read_meta(folder, tag)
    weights, header = _load_tensors(folder / f"{tag}.safetensors")
    if header.get("generation") != meta["generation"]:
        raise CheckpointError(f"{folder}/{tag}: its weights and metadata come from different saves "
                              f"(a save was cut short); use the other checkpoint or resume training")
    try:
        spec = ArchSpec.from_dict(meta["spec"])
    except SpecError as e:
        raise CheckpointError(f"{folder}/{tag}.json: its architecture is invalid ({e})") from None
    return Checkpoint(spec, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, meta)


def load_train_state(folder: Path, tag: str = "last") -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(tensors, their JSON metadata, checkpoint metadata) for resuming."""
    meta = read_meta(folder, tag)
    tensors, header = _load_tensors(folder / f"{tag}.state.safetensors")
    if header.get("generation") != meta["generation"]:
        raise CheckpointError(f"{folder}/{tag}: its training state and metadata come from different saves")
    return tensors, json.loads(header.get("json", "{}")), meta


def load_model(folder: Path, tag: str = "best", device: str | torch.device = "cpu"):
    """The model of a checkpoint, in eval mode, with its metadata."""
    from core.nn.model import build_model

    ckpt = load_checkpoint(folder, tag)
    model = build_model(ckpt.spec)
    try:
        model.load_state_dict(ckpt.weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{folder}/{tag}: the weights do not fit its architecture ({first})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), ckpt.meta  # as trained: faster


# ---- optimizer state without pickle -------------------------------------------------------------

def flatten_state(prefix: str, state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a (nested) state dict into tensors and plain JSON values, keyed by dotted paths."""
    tensors, plain = {}, {}

    def walk(path: str, value) -> None:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
        elif isinstance(value, dict):
            plain[path] = {"__dict__": [str(k) for k in value]}
            for k, v in value.items():
                walk(f"{path}.{k}", v)
        else:
            plain[path] = value

    walk(prefix, state)
    return tensors, plain


def unflatten_state(prefix: str, tensors: dict[str, torch.Tensor], plain: dict):
    def build(path: str):
        if path in tensors:
            return tensors[path]
        value = plain[path]
        if isinstance(value, dict) and "__dict__" in value:
            # torch keys its optimizer state by int parameter index
            return {(int(k) if k.isdigit() else k): build(f"{path}.{k}") for k in value["__dict__"]}
        return value

    return build(prefix)
