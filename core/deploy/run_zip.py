"""A run trained elsewhere, back as a run: the `run.zip` that an exported train.py writes (core.deploy.code_export),
taken by `python -m core import run.zip --run-dir runs/NAME` and Runs > Import.

    run.zip/
        config.json                     the RunConfig it trained (with `params`)
        metrics.jsonl                   one line per epoch ("kind": "epoch"), as a run folder's
        results.json                    per-class accuracy and confusion matrix of its final weights
        record.json                     where it trained: torch, device, precision, platform
        checkpoints/best.json           the checkpoint's metadata (core.nn.checkpoint's format)
        checkpoints/best.safetensors    its weights

The archive is read in memory and never extracted; each member is read to a size limit whatever its header claims,
and nothing in it is unpickled (the weights are safetensors). The result is a finished run marked imported, with its
curves, results and record, which the Runs, Evaluate and Classify pages and `submit` use as any other.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from core.deploy.importer import WeightsError, match, read_file
from core.design.config import RunConfig
from core.design.spec import SpecError
from core.nn.checkpoint import FORMAT, save_checkpoint
from core.nn.platform import torch_facts
from core.runs.run import Run, create_run

CONFIG, METRICS, RESULTS, RECORD = "config.json", "metrics.jsonl", "results.json", "record.json"
META, WEIGHTS = "checkpoints/best.json", "checkpoints/best.safetensors"
NEEDED = (CONFIG, METRICS, META, WEIGHTS)
# what the pages and reports read of each kind of metrics line (core.runs.progress)
NUMBERS = {"epoch": ("epoch", "step", "train_loss", "eval_loss", "eval_acc", "lr", "elapsed"),
           "step": ("epoch", "step", "train_loss", "lr", "elapsed")}
MAX_MEMBERS = 64
MAX_JSON_BYTES = 20_000_000           # metrics of thousands of epochs fit many times over
MAX_WEIGHTS_BYTES = 400_000_000       # 5M parameters are 20 MB in fp32; a design over budget may be larger
HOW = "an exported train.py writes it (python -m core export RUN DIR --format code)"


class RunZipError(WeightsError):
    """A run.zip that cannot be imported; the message says why and what to do."""


def _inside(member: str) -> str:
    """A member's name without one top folder (a run.zip re-zipped as a folder)."""
    parts = PurePosixPath(member).parts
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0] not in ("checkpoints",) else member


def read_members(data: bytes, name: str) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise RunZipError(f"{name}: not a zip file ({e}); give the run.zip {HOW}") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            raise RunZipError(f"{name}: holds {len(infos):,} files; a run.zip holds {len(NEEDED)} to 6")
        members = {}
        for info in infos:
            key = _inside(info.filename)
            if key not in (CONFIG, METRICS, RESULTS, RECORD, META, WEIGHTS):
                continue  # never extracted, never read: what else it holds does not matter
            limit = MAX_WEIGHTS_BYTES if key == WEIGHTS else MAX_JSON_BYTES
            try:
                with archive.open(info) as f:
                    content = f.read(limit + 1)  # the size the header claims may lie
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError) as e:
                raise RunZipError(f"{name}: its {info.filename} cannot be read ({e}); the zip is damaged") from None
            if len(content) > limit:
                raise RunZipError(f"{name}: its {info.filename} is larger than {limit:,} bytes; not a run's")
            members[key] = content
    missing = [n for n in NEEDED if n not in members]
    if missing:
        raise RunZipError(f"{name}: has no {missing[0]}; a run.zip holds {', '.join(NEEDED)} ({HOW})")
    return members


def _json(members: dict[str, bytes], key: str, name: str):
    try:
        return json.loads(members[key])
    except (ValueError, UnicodeDecodeError) as e:
        raise RunZipError(f"{name}: its {key} is not valid JSON ({e})") from None


def _metrics(members: dict[str, bytes], name: str) -> list[dict]:
    lines = []
    for i, line in enumerate(members[METRICS].decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise RunZipError(f"{name}: line {i} of its {METRICS} is not JSON") from None
        if not isinstance(row, dict) or row.get("kind") not in NUMBERS:
            raise RunZipError(f"{name}: line {i} of its {METRICS} is not a metrics line (an object with "
                              f"\"kind\": \"epoch\" or \"step\")")
        wrong = next((k for k in NUMBERS[row["kind"]] if isinstance(row.get(k), bool) or
                      not isinstance(row.get(k), (int, float)) or row[k] != row[k]), None)
        if wrong is not None or (row["kind"] == "epoch" and not isinstance(row.get("eval_split"), str)):
            raise RunZipError(f"{name}: line {i} of its {METRICS} has no number {wrong or 'eval_split'!r} "
                              f"(an {row['kind']} line has {', '.join(NUMBERS[row['kind']])})")
        lines.append(row)
    return lines


def read_run_zip(data: bytes, name: str) -> tuple[RunConfig, dict, dict[str, torch.Tensor], list[dict], dict, dict]:
    """(config, checkpoint metadata, weights, metrics, results, record) of a run.zip's bytes, all checked."""
    members = read_members(data, name)
    try:
        cfg = RunConfig.from_dict(_json(members, CONFIG, name))
    except SpecError as e:
        raise RunZipError(f"{name}: its {CONFIG} is not a run config ({e})") from None
    meta = _json(members, META, name)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunZipError(f"{name}: its {META} is not a ResNet Studio checkpoint (format {FORMAT})")
    if meta.get("spec") != cfg.arch.to_dict():
        raise RunZipError(f"{name}: its checkpoint's architecture differs from its config's; the zip was changed")
    classes, mean, std = meta.get("classes"), meta.get("mean"), meta.get("std")
    if not (isinstance(classes, list) and len(classes) == cfg.arch.num_classes and all(isinstance(c, str) for c in
                                                                                         classes)):
        raise RunZipError(f"{name}: its checkpoint's classes are not {cfg.arch.num_classes} names")
    for what, values in (("mean", mean), ("std", std)):
        if not (isinstance(values, list) and len(values) == 3 and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise RunZipError(f"{name}: its checkpoint's {what} is not three numbers")
    if min(std) <= 0:
        raise RunZipError(f"{name}: its checkpoint's std {std} has a channel at 0 or below")
    try:
        tensors = load_safetensors(members[WEIGHTS])  # safetensors: no code runs on load
        header = json.loads(members[WEIGHTS][8:8 + int.from_bytes(members[WEIGHTS][:8], "little")])
    except (SafetensorError, ValueError, OverflowError) as e:
        raise RunZipError(f"{name}: its {WEIGHTS} is not a readable safetensors file ({e})") from None
    if (header.get("__metadata__") or {}).get("generation") != meta.get("generation"):
        raise RunZipError(f"{name}: its weights and checkpoint metadata come from different saves")
    weights = match(tensors, cfg, f"{name}: {WEIGHTS}")
    results = _json(members, RESULTS, name) if RESULTS in members else {}
    record = _json(members, RECORD, name) if RECORD in members else {}
    if not isinstance(results, dict) or not isinstance(record, dict):
        raise RunZipError(f"{name}: its {RESULTS} and {RECORD} must be JSON objects")
    return cfg, meta, weights, _metrics(members, name), results, record


def import_run_zip(source: Path | bytes, name: str, run_dir: str | Path) -> Run:
    """A new finished run at `run_dir` from a run.zip (a path, or its bytes named `name`)."""
    data = source if isinstance(source, bytes) else read_file(source, name)
    cfg, meta, weights, metrics, results, record = read_run_zip(data, name)
    run = Run.at(run_dir)
    run = create_run(cfg, run.name, run.dir.parent, origin=f"imported from {name}")
    for line in metrics:
        run.append_metrics(line)
    if results:
        run.write_results(results)
    kept = {k: v for k, v in meta.items() if k not in ("format", "generation", "has_train_state")}
    save_checkpoint(run.checkpoints, "best", weights, kept | {"imported_from": name})
    run.record_import(torch_facts(torch.device("cpu")), hashlib.sha256(data).hexdigest(), trained_elsewhere=record)
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    run.update_status(state="finished", ended=time.time(), imported_from=name,
                      epoch=epochs[-1].get("epoch") if epochs else None,
                      best_acc=max((m.get("eval_acc", 0) for m in epochs), default=None),
                      device=record.get("device"), device_name=record.get("device_name"))
    return run
