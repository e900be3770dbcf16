"""The queue: which devices a run asks for, and one run per device at a time on this machine.

Each device has a lock file in one folder per machine (not per runs folder): `gpu-<UUID>.lock` per GPU,
`cpu.lock` for the CPU, which a CPU run takes whole (two CPU trainings on the same cores slow each
other tenfold), `mps.lock` for Apple's GPU. A run starts when it holds every lock it needs; locks are tried in
sorted order and all let go when one is busy, so two runs never hold half of each other's GPUs. A lock
(core.files.FileLock) dies with its process, so a killed run never blocks the queue.

GPU IDs are the machine's numbering as CUDA_VISIBLE_DEVICES lists it (else 0..N-1): what runs ask for. Their
locks are named by each GPU's UUID, which names the same physical GPU in every process: under Slurm every job
sees its GPU as 0, and two jobs of one user on a node must not queue behind each other. Where torch cannot say
(no CUDA: CUDA_VISIBLE_DEVICES fakes GPUs for the queue's bookkeeping), the ID names the lock.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from core.errors import StudioError
from core.files import FileLock, is_locked
from core.runs.run import list_runs

POLL_SECONDS = 0.5


class DeviceError(StudioError):
    pass


class StopWaiting(Exception):
    """A stop was asked for while the run waited for its devices."""


def lock_dir() -> Path:
    """$RESNET_STUDIO_LOCKS, else one folder per user in $XDG_RUNTIME_DIR or the temp dir."""
    if os.environ.get("RESNET_STUDIO_LOCKS"):
        return Path(os.environ["RESNET_STUDIO_LOCKS"])
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"resnet-studio-locks-{os.getuid()}"


def listed_gpus() -> list[str] | None:
    """The GPU IDs CUDA_VISIBLE_DEVICES lists, in CUDA's order; None when it is not set."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return None
    ids = []
    for gpu in (g.strip() for g in listed.split(",")):
        if not gpu or gpu.startswith("-"):  # CUDA stops at the first invalid entry; -1 hides all
            break
        ids.append(gpu)
    return ids


def visible_gpus() -> list[str]:
    """The GPU IDs this process may use, in CUDA's order (cuda:0 is the first)."""
    listed = listed_gpus()
    if listed is not None:
        return listed
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_uuids() -> dict[str, str]:
    """The UUID of each visible GPU by its ID, as CUDA reports it; empty where torch cannot tell."""
    import torch

    uuids = {}
    try:
        for index, gpu in enumerate(visible_gpus()[:torch.cuda.device_count()]):
            uuids[gpu] = str(torch.cuda.get_device_properties(index).uuid)
    except (RuntimeError, AssertionError, AttributeError):  # no CUDA, or an old driver: the IDs name the locks
        return {}
    return uuids


def mps_visible() -> bool:
    import torch

    return torch.backends.mps.is_available()


def gpu_id(device: str) -> str:
    """The queue's ID of torch's `cuda:N`, without asking torch."""
    index = int(device.split(":")[1])
    listed = listed_gpus()
    return str(index) if listed is None else listed[index]


@dataclass(frozen=True)
class DeviceRequest:
    """The CPU, Apple's GPU, or `count` CUDA GPUs: the named ones, or any free ones when `gpus` is empty."""
    kind: str                      # "cpu", "mps" or "cuda"
    count: int = 1
    gpus: tuple[str, ...] = ()

    @classmethod
    def parse(cls, device: str = "auto", gpus: str | None = None) -> DeviceRequest:
        """From `--device` (auto, cpu, cuda, cuda:N, mps) and `--gpus` (a count like 2, or IDs like 0,2)."""
        visible = visible_gpus()
        if gpus:
            if device not in ("auto", "cuda"):
                raise DeviceError(f"--gpus {gpus} with --device {device}: GPUs are CUDA devices; drop --device")
            if gpus.isdigit():
                if not 1 <= int(gpus) <= len(visible):
                    raise DeviceError(f"--gpus {gpus}: {len(visible)} GPU(s) visible here "
                                      f"({', '.join(visible) or 'none'})")
                return cls("cuda", int(gpus))
            named = tuple(dict.fromkeys(g.strip() for g in gpus.split(",") if g.strip()))
            unknown = [g for g in named if g not in visible]
            if unknown or not named:
                raise DeviceError(f"--gpus {gpus}: no GPU {', '.join(unknown) or '(none named)'} here; visible: "
                                  f"{', '.join(visible) or 'none'} (a single ID needs a comma: --gpus 2,)")
            return cls("cuda", len(named), named)
        if device == "auto":
            device = "cuda" if visible else "mps" if mps_visible() else "cpu"
        if device in ("cpu", "mps"):
            return cls(device)
        if device == "cuda":
            if not visible:
                raise DeviceError("device cuda: no CUDA GPU is visible here; use --device cpu or auto")
            return cls("cuda", 1)
        if device.startswith("cuda:") and device[5:].isdigit():
            index = int(device[5:])
            if index >= len(visible):
                raise DeviceError(f"device {device}: only {len(visible)} GPU(s) here (cuda:0 ...)")
            return cls("cuda", 1, (visible[index],))
        raise DeviceError(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps (or --gpus)")

    def candidates(self) -> list[str]:
        """Devices this request may take, in the order they are tried: "cpu", "mps", or gpu<ID>."""
        if self.kind in ("cpu", "mps"):
            return [self.kind]
        return [f"gpu{g}" for g in sorted(self.gpus or visible_gpus(), key=_natural)]


def _natural(gpu: str):
    return (0, int(gpu), "") if gpu.isdigit() else (1, 0, gpu)


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):  # a lock file of garbage names nobody: it is the lock that counts
        return path.read_bytes().decode(errors="replace").strip() or "another run"
    return "another run"


def lock_file(folder: Path, name: str, uuids: dict[str, str]) -> Path:
    """The lock of a device: a GPU's by its UUID where known (the same GPU in every job), else by its name."""
    gpu = name.removeprefix("gpu")
    return folder / (f"gpu-{uuids[gpu]}.lock" if name.startswith("gpu") and gpu in uuids else f"{name}.lock")


@contextlib.contextmanager
def hold(request: DeviceRequest, holder: str, should_stop, on_wait) -> Iterator[list[str]]:
    """Wait until `request` can have all its devices, hold them, and yield their IDs (GPU IDs, or
    ["cpu"]). `on_wait(message)` is called once when the run has to wait; `should_stop()` is
    polled meanwhile and ends the wait with StopWaiting."""
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    held: dict[str, FileLock] = {}
    announced = False
    uuids = gpu_uuids() if request.kind == "cuda" else {}
    files = {name: lock_file(folder, name, uuids) for name in request.candidates()}
    try:
        while True:
            busy = []
            for name in request.candidates():
                if len(held) == request.count:
                    break
                lock = FileLock(files[name])
                if lock.acquire(wait=0):
                    held[name] = lock
                else:
                    busy.append(name)
            if len(held) == request.count:
                break
            for lock in held.values():  # all or nothing: holding part of a request could starve another run
                lock.release()
            held.clear()
            if should_stop():
                raise StopWaiting
            if not announced:
                on_wait(", ".join(f"{name} is busy with {_holder(files[name])}" for name in busy))
                announced = True
            time.sleep(POLL_SECONDS)
        for lock in held.values():
            lock.note(holder)
        yield [name.removeprefix("gpu") for name in held]
    finally:
        for lock in held.values():
            lock.release()


def queue_state() -> list[dict]:
    """The devices this machine's queue knows (the CPU, and every GPU a run has asked for), each as
    {"device", "held_by"}: the run holding it, or None. Asks nothing of torch."""
    folder = lock_dir()
    names = {"cpu"}
    if folder.is_dir():
        names |= {p.stem for p in folder.glob("*.lock")}
    rows = []
    for name in sorted(names, key=lambda n: (n != "cpu", n != "mps", _natural(n.removeprefix("gpu")))):
        path = folder / f"{name}.lock"
        rows.append({"device": name, "held_by": _holder(path) if is_locked(path) else None})
    return rows


@dataclass(frozen=True)
class Launch:
    """How many processes, on how many machines: torchrun's own options."""
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv: str | None = None        # HOST:PORT of the c10d rendezvous, needed with nnodes > 1
    max_restarts: int = 0

    def __post_init__(self):
        if self.nproc_per_node < 1 or self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise DeviceError(f"--nproc-per-node {self.nproc_per_node}, --nnodes {self.nnodes}, --node-rank "
                              f"{self.node_rank}: need at least 1 process on each of at least 1 machine, "
                              f"and 0 <= node rank < nnodes")
        if self.nnodes > 1 and not self.rdzv:
            raise DeviceError(f"--nnodes {self.nnodes}: give --rdzv HOST:PORT, an address of the first machine "
                              f"that every machine reaches (the same on all)")
        if self.max_restarts < 0:
            raise DeviceError("--max-restarts: 0 or more")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def cli_args(self) -> list[str]:
        """The same processes as `python -m core train` options."""
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--max-restarts={self.max_restarts}"]
        if self.nnodes > 1:
            args += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--rdzv={self.rdzv}"]
        return args

    def torchrun_args(self, run_id: str, worker: list[str]) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--max-restarts={self.max_restarts}"]
        if self.nnodes > 1:
            args += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint={self.rdzv}", f"--rdzv-id={run_id}"]
        else:
            args += ["--standalone"]  # a free port on localhost
        return args + ["-m", "core", *worker]


def launch_options(device: str, gpus: list[str] = (), cpu_processes: int = 1) -> dict:
    """`core.runs.run.launch` keywords for devices chosen as the Train page offers them: "cuda" with torch's
    names of the GPUs (cuda:0, ...), one process each; "cpu" as `cpu_processes` processes; or "auto"."""
    if device == "cpu":
        return {"device": "cpu", "processes": [f"--nproc-per-node={cpu_processes}"] if cpu_processes > 1 else []}
    if device != "cuda":  # auto, or mps: one process (no DDP on Apple's GPU)
        return {"device": device}
    if not gpus:
        raise DeviceError("no GPU picked: pick one or more, or train on the CPU")
    # IDs, and a trailing comma so that one ID is not read as a count
    return {"device": "cuda", "gpus": ",".join(gpu_id(g) for g in gpus) + ","}


def plan(device: str = "auto", gpus: str | None = None, nproc_per_node: int | None = None,
         **nodes) -> tuple[DeviceRequest, Launch]:
    """What a run asks of this machine (its devices) and of torchrun (its processes). One GPU per
    process: a GPU count or list sets the process count, or the process count sets the GPU count."""
    request = DeviceRequest.parse(device, gpus)
    if request.kind == "mps" and ((nproc_per_node or 1) > 1 or nodes.get("nnodes", 1) > 1):
        raise DeviceError("Apple's GPU (mps) trains as one process: torch has no DistributedDataParallel for it")
    if request.kind == "cuda" and nproc_per_node not in (None, request.count):
        if gpus or request.gpus:
            raise DeviceError(f"{request.count} GPU(s) asked for and --nproc-per-node {nproc_per_node}: each "
                              f"process takes one GPU, so give one of the two")
        request = DeviceRequest.parse(device, str(nproc_per_node))
    processes = request.count if request.kind == "cuda" else nproc_per_node or 1
    return request, Launch(processes, **nodes)


def queue(runs_dir: Path | None = None) -> dict:
    """This machine's devices with the run that holds each, and the runs of a runs folder that wait."""
    waiting = [{"run": run.name, "waiting_for": status.get("waiting_for")} for run in list_runs(runs_dir)
               if (status := run.status()).get("state") == "queued" and status.get("waiting_for")]
    return {"devices": queue_state(), "waiting": waiting}
