"""One run as several processes: torchrun starts them, DistributedDataParallel averages gradients.

`python -m core train --nproc-per-node N [--nnodes M --node-rank R --rdzv HOST:PORT]` waits in this
machine's queue for its devices (core.runs.queue), then runs torch's own launcher (torch.distributed.run,
the code behind `torchrun`) in this process, with `-m core train --resume RUN` as the workers'
command. Running `torchrun ... -m core train --resume RUN` directly (under Slurm, say) trains the
same way, without our queue. NCCL joins GPUs, gloo CPUs.

What a run means on several processes (docs/DISTRIBUTED.md says it for users):
- `batch_size` is the global batch: each of the W processes takes batch_size / W images per step,
  so steps per epoch, learning rate and schedule do not depend on W, and a run resumes at its saved
  step with any W that divides the batch.
- Each epoch's order comes from (seed, epoch) alone; process r takes the r-th slice of every
  global batch and holds just those images (its shard) on its device. Augmentation and dropout are
  seeded by (seed, step, W, r): reproducible for a given seed and world size.
- BatchNorm normalises each process's own slice unless the config says `sync_batchnorm`.
- Only rank 0 writes the run folder, but for the heartbeats: the first process of each machine beats into its
  machine's file, which that machine's watcher reads (core.runs.watch). Every process checks at each step
  whether any of them was asked to stop, so all stop after the same step and rank 0 saves once.
- A process that dies ends the run: torchrun stops the others (no restarts unless asked) and we
  write `failed` naming the rank that failed first and its error.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from core.design.config import RunConfig
from core.errors import StudioError
from core.runs.queue import DeviceRequest, Launch, StopWaiting, hold
from core.processes import process_start_time
from core.runs.run import ACTIVE, Run, StopFlag
from core.runs.watch import mark_phase

# A process that hangs (rather than dies) fails the run after this. Every process evaluates for
# itself, so no process waits on another for longer than a checkpoint save.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


class LostPeer(StudioError):
    """Another process of the run is gone (or hangs): this one cannot go on. A symptom, never the
    root cause of a failure."""


class World:
    """This process's place among the run's processes; one process of one when not under torchrun."""

    def __init__(self, rank: int = 0, local_rank: int = 0, size: int = 1):
        self.rank, self.local_rank, self.size = rank, local_rank, size
        self.control = None  # the group that agrees on stopping: CPU tensors, so no GPU sync

    @classmethod
    def from_env(cls) -> World:
        """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for every process it starts."""
        if "TORCHELASTIC_RUN_ID" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self, device: torch.device) -> None:
        if self.size == 1:
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's communicator for this process lives on its own GPU
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        self.control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend == "nccl" else None

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        if self.size == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(t)
        return t


def check(cfg: RunConfig, device_type: str, world_size: int) -> None:
    """What a run's config must say to train on `world_size` processes of this device type."""
    if cfg.train.batch_size % world_size:
        raise StudioError(f"batch_size {cfg.train.batch_size} is the global batch and does not split over "
                          f"{world_size} processes; use a multiple of {world_size}")
    if cfg.train.time_limit and world_size > 1:  # each process's clock would end it at another step
        raise StudioError("time_limit: trains as one process only; give epochs to train on several")
    if cfg.train.sync_batchnorm and world_size > 1 and device_type != "cuda":
        raise StudioError("sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; turn it off for CPU runs")


def is_lost_peer(e: BaseException) -> bool:
    """An error that only says another process went away (gloo's socket closed, a timeout)."""
    return isinstance(e, (dist.DistError, LostPeer)) or \
        isinstance(e, RuntimeError) and any(s in str(e) for s in ("Connection closed by peer", "Connection reset",
                                                                  "Broken pipe", "Timed out", "timed out"))


def record_error(e: BaseException) -> None:
    """Leave the error where torchrun's agent reads it (TORCHELASTIC_ERROR_FILE), to name the root cause."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(LostPeer(str(e)) if is_lost_peer(e) else e)


def failure_message(failures: dict) -> tuple[str, bool]:
    """(what to say, whether it is a root cause) for torchrun's {global rank: ProcessFailure}: the
    first process that failed on its own, not one that lost its partner."""
    def said(f) -> str:
        message = f.message["message"] if isinstance(f.message, dict) else f.message
        return message or f"exit code {f.exitcode}"

    symptom = f"{LostPeer.__name__}: "  # how torchrun's error file starts for a LostPeer
    causes = {rank: f for rank, f in failures.items() if not said(f).startswith(symptom)}
    first = causes or failures
    rank = min(first, key=lambda r: (first[r].timestamp, r))
    f = failures[rank]
    what = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"failed: {said(f).removeprefix(symptom)}"
    return f"rank {rank} (local rank {f.local_rank}, pid {f.pid} on {socket.gethostname()}) {what}", bool(causes)


def run_processes(run: Run, launch: Launch, request: DeviceRequest, data: str | None = None,
                  epochs: int | None = None) -> dict:
    """Hold this machine's devices, run torchrun here, and say how the run ended; the first machine
    (node rank 0) keeps the run's status while it waits."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as torchrun


    head = launch.node_rank == 0
    stop = StopFlag()
    if head:
        run.update_status(pid=os.getpid(), pid_start=process_start_time(os.getpid()), host=socket.gethostname(),
                          world_size=launch.world_size, nnodes=launch.nnodes, error=None)

    def on_wait(message: str) -> None:
        if head:
            run.update_status(state="queued", waiting_for=message)
        mark_phase(run, launch.node_rank, "waiting", os.getpid())  # for another run's devices: no stall
        print(f"queued: {message}", flush=True)

    worker = ["train", "--resume", str(run.dir), "--device", request.kind]
    worker += ["--data", data] if data else []
    worker += ["--epochs", str(epochs)] if epochs else []
    try:
        check(run.config(), request.kind, launch.world_size)  # before waiting, and before starting processes
        with hold(request, str(run.dir), stop, on_wait) as devices:
            if request.kind == "cuda":
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # process r takes cuda:r
            if head:
                run.update_status(devices=devices, waiting_for=None)
            # other machines may join late, bounded by the rendezvous's own timeout; one machine starts at once
            mark_phase(run, launch.node_rank, "joining" if launch.nnodes > 1 else "starting", os.getpid())
            torchrun(parse_args(launch.torchrun_args(run.name, worker)))
    except StopWaiting:
        return run.update_status(state="stopped", ended=time.time(), waiting_for=None) if head else {}
    except StudioError as e:
        return run.update_status(state="failed", ended=time.time(), error=str(e), waiting_for=None) if head \
            else {"state": "failed", "error": str(e)}
    except ChildFailedError as e:
        message, root_cause = failure_message(e.failures)
        print(f"failed: {message}", flush=True)
        if root_cause or ours(run):  # a root cause found on another machine stays
            run.update_status(state="failed", ended=time.time(), error=message, waiting_for=None)
    except SignalException as e:  # stopped: torchrun passed the signal to the workers, who saved
        print(f"torchrun: {e}", flush=True)
    except Exception as e:  # torchrun itself: a rendezvous that timed out, a port in use, ...
        print(f"torchrun failed: {type(e).__name__}: {e}", flush=True)
        if ours(run):
            return run.update_status(state="failed", ended=time.time(), waiting_for=None,
                                     error=f"torchrun: {type(e).__name__}: {e}")
    if head and ours(run):
        return run.update_status(state="failed", ended=time.time(), waiting_for=None,
                                 error="the training processes ended without saying how; see train.log")
    return run.status()


def ours(run: Run) -> bool:
    """Whether the run is still active under this launcher (not ended, nor resumed by another)."""
    status = run.status()
    return status.get("state") in ACTIVE and status.get("pid") == os.getpid()
