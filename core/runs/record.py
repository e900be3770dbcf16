"""A run's reproducibility record (record.json): what made it, so that it can be made again, or told apart.

    {"origin": "python -m core train --preset resnet20 ..." | "app: Train page, Launch" | "imported from FILE",
     "started": time, "command": [argv of the process that trained], "cwd": ...,
     "git": {"commit", "dirty", "branch"} or null outside a checkout,
     "host", "os", "cpu", "cores", "vector_isa", "int8_kernels", "isa_caps" (core.host),
     "python", "packages": {torch, torchvision, onnxruntime, ...},
     "torch": {version, cuda, cudnn, device, gpu, onednn_isa, aten_capability, threads, ...} (core.nn.platform),
     "world_size", "seeds": {"seed": N, ...}, "data": {"data", "kind", "sha256"},
     "resumes": [{"started", "command", "changed": {fact: new value}}]}  (later sessions, when a fact changed)

The run's creator writes the origin; the training process fills in the rest at its start (core.engine.loop);
an import writes it whole (core.deploy.importer). Torch-free: the pages and `core runs` read it at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from core.data.sources import BUILTIN, BUILTIN_ARCHIVE, copy_name
from core.host import describe
from core.files import PROJECT_DIR, FileError, cache_dir, read_json, read_object, update_json, write_json

PACKAGES = ("torch", "torchvision", "onnxruntime", "numpy", "safetensors", "pillow")
# what may differ between two sessions of one run, or two runs, without saying anything about how they train
MOMENTARY = ("started", "command", "origin", "resumes", "cwd")
HASH_CHUNK = 1 << 20


def invocation() -> str:
    """This process's command line as it was typed (the interpreter's path included)."""
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def git_state(folder: Path = PROJECT_DIR) -> dict | None:
    """The checkout's commit, branch and whether tracked files differ from it; None outside a git checkout
    (an installed copy, a tarball) or without git. Untracked files (runs/, caches) do not count as dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "branch": branch}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on, read from their metadata (no imports)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def data_fingerprint(data: str) -> dict:
    """What identifies a run's data: the built-in slice by name (and its archive's hash), an archive or file
    by its sha256, a folder by the sha256 of its file list (relative paths and sizes: reading 60,000 images
    to hash them would take longer than the run's start may). A hash is kept per machine, keyed by the
    path, size and modification time, so a second run on the same copy does not read it again."""
    if data in (None, BUILTIN):
        return {"data": BUILTIN, "kind": "built-in slice of the JPEG copy", "sha256": file_sha256(BUILTIN_ARCHIVE)}
    path = Path(data).expanduser().resolve()
    if path.is_file():
        return {"data": data, "path": str(path), "kind": "archive sha256", "sha256": file_sha256(path),
                "bytes": path.stat().st_size}
    if path.is_dir():
        lines = sorted(f"{Path(d, f).relative_to(path)}\0{os.stat(Path(d, f)).st_size}\n"
                       for d, _, names in os.walk(path) for f in names)
        return {"data": data, "path": str(path), "kind": "file list sha256", "files": len(lines),
                "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}
    return {"data": data, "kind": "missing on this machine", "sha256": None}


def file_sha256(path: Path) -> str:
    info = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:16]
    kept = cache_dir() / "hashes" / f"{key}.json"
    with contextlib.suppress(FileError):
        known = read_json(kept)
        if known:
            return known["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    with contextlib.suppress(OSError):  # an unwritable cache only means hashing again next time
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_json(kept, {"path": str(path), "sha256": digest.hexdigest()})
    return digest.hexdigest()


def machine_facts() -> dict:
    """This machine and process, torch aside (core.nn.platform gives torch's facts)."""
    return {"host": socket.gethostname(), "os": platform.platform(), **describe(),
            "python": platform.python_version(), "packages": versions()}


def process_facts(torch_facts: dict) -> dict:
    """This process now: its command, the code's commit, the machine and libraries."""
    return {"started": time.time(), "command": invocation(), "cwd": os.getcwd(), "git": git_state(),
            **machine_facts(), "torch": torch_facts}


def session_facts(torch_facts: dict, world_size: int, seed: int, data: str) -> dict:
    """Everything that makes a session of a run, now."""
    return process_facts(torch_facts) | {
        "world_size": world_size, "data": data_fingerprint(data),
        "seeds": {"seed": seed, "data_order": "seed * 100003 + epoch",
                  "per_step": "(seed * 1000003 + step) * world_size + rank"}}


def write_origin(path: Path, origin: str | None = None) -> None:
    """What asked for the run (a command line, or the app's action); the record's first line, at creation."""
    write_json(path, {"origin": origin or invocation()})


def write_start(path: Path, torch_facts: dict, world_size: int, seed: int, data: str) -> dict:
    """At a training process's start: the first session's facts become the record; a resumed session adds
    what changed since (another machine, commit, library) under `resumes`."""
    now = session_facts(torch_facts, world_size, seed, data)

    def add(record: dict) -> dict:
        if "started" not in record:
            return record | now
        changed = {k: v for k, v in now.items() if k not in MOMENTARY and record.get(k) != v}
        return record | {"resumes": [*record.get("resumes", []),
                                     {"started": now["started"], "command": now["command"], "changed": changed}]}

    return update_json(path, add)


def write_import(path: Path, torch_facts: dict, weights_sha256: str) -> dict:
    """An imported run's record: the process that imported it, and the sha256 of the weights it read."""
    return update_json(path, lambda record: record | process_facts(torch_facts) | {"weights_sha256": weights_sha256})


def read_record(path: Path) -> dict | None:
    """The record, or None for a run made before records were kept (or whose record is damaged)."""
    try:
        return read_object(path)
    except FileError:
        return None


def differences(a: dict | None, b: dict | None) -> dict[str, tuple]:
    """The facts in which two records differ (flattened: "torch.version", "git.commit", ...), as (a, b) pairs;
    the moment, command and origin are left out: they always differ."""
    flat_a, flat_b = flatten(a or {}), flatten(b or {})
    return {k: (flat_a.get(k), flat_b.get(k)) for k in sorted(set(flat_a) | set(flat_b))
            if k.split(".")[0] not in MOMENTARY and flat_a.get(k) != flat_b.get(k)}


def flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def data_copy(record: dict | None, source: str | None = None) -> str:
    """Which CIFAR-10 a run trained and was measured on, for people: known by the sha256 its record keeps, else
    by `source` (how the data was described when it was read) or the record's own path."""
    data = (record or {}).get("data") or {}
    return copy_name(source or data.get("data"), data.get("sha256"))


def summary_lines(record: dict | None) -> list[tuple[str, str]]:
    """The record as (fact, value) rows for people: the pages, reports and model cards show these."""
    if not record:
        return [("record", "none: the run was made before records were kept")]
    git, torch, data = record.get("git"), record.get("torch") or {}, record.get("data") or {}
    packages = record.get("packages") or {}
    rows = [("origin", record.get("origin", "unknown"))]
    if record.get("reconstructed"):
        rows.append(("reconstructed", record["reconstructed"]))
    if "started" in record:
        rows += [("started", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record["started"]))),
                 ("command", record.get("command", "")),
                 ("code", "not a git checkout" if git is None else
                  f"{git['commit']}" + (" (with uncommitted changes)" if git["dirty"] else "") +
                  (f" on {git['branch']}" if git.get("branch") not in (None, "HEAD") else ""))]
    rows += [(name, value) for name, value in (
        ("machine", record.get("host")), ("os", record.get("os")),
        ("CPU", f"{record['cpu']} ({record.get('cores')} cores)" if record.get("cpu") else None),
        ("cores", record.get("cores") if not record.get("cpu") else None),
        ("vector ISA", record.get("vector_isa")), ("int8 kernels", record.get("int8_kernels")),
        ("ISA caps", ", ".join(f"{k}={v}" for k, v in record["isa_caps"].items()) if record.get("isa_caps") else None),
        ("device", torch.get("device_name") or torch.get("device")), ("GPU", torch.get("gpu")),
        ("oneDNN ISA", torch.get("onednn_isa")), ("CPU threads", torch.get("threads")),
        ("world size", record.get("world_size")), ("python", record.get("python")),
        ("torch", torch.get("version")), ("CUDA", torch.get("cuda")), ("cuDNN", torch.get("cudnn")),
        ("torchvision", packages.get("torchvision")), ("onnxruntime", packages.get("onnxruntime")),
        ("seed", (record.get("seeds") or {}).get("seed")),
        ("data", f"{data_copy(record)}: {data.get('data')} · {data.get('kind')}" if data else None),
        ("data sha256", data.get("sha256")), ("weights sha256", record.get("weights_sha256")))
        if value not in (None, "")]
    for resume in record.get("resumes", []):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(resume["started"]))
        changed = ", ".join(f"{k}: {v}" for k, v in flatten(resume["changed"]).items()) or "nothing changed"
        rows.append((f"resumed {when}", changed))
    return rows
