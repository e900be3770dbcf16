"""Training: one loop, top to bottom, in the process of one run (`python -m core train`).

The dataset sits on the training device as uint8 and is augmented there in batches. The model runs
channels_last (NCHW on Apple's mps), in the arithmetic core.nn.infer.amp_policy picks for the device (bf16, fp16
with a GradScaler, or fp32; the log and record.json say which and why), with a fused optimizer
step on CUDA. SIGTERM (Stop) lets
the current step finish, saves `last`, and ends the run as `stopped`; resuming continues at the
saved epoch and step, with the same data order, flips and augmentation draws, the optimizer rebuilt from
the config for this device and its state loaded: a run of epochs stopped and resumed ends with the weights
of one that was not (tests/engine/test_engine.py, on the CPU). With `time_limit` the run trains for that many seconds
instead of its epochs, and the schedule drawn over its epochs is stretched over that time. Under torchrun
the same loop runs in every process, with DistributedDataParallel; core/engine/distributed.py says what that
means for batch, order and stop. A resume may change the batch (`--resume --batch-size N`, after running out of
memory): the saved position carries over to it as the images of the epoch already trained. Running out of memory
fails the run with the figures and a batch that should fit; it stays resumable.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from core.data.augment import alternating_flip
from core.data.datasets import Dataset, Split, load_dataset, split_validation
from core.design.budget import count
from core.design.config import RunConfig, TrainConfig
from core.engine.distributed import World, check, is_lost_peer, record_error
from core.engine.optim import lr_at
from core.engine.trainer import Trainer
from core.errors import StudioError
from core.nn.checkpoint import load_train_state, save_checkpoint
from core.nn.gpu import driver_problem
from core.nn.infer import Evaluation, auto_device, evaluate, pick_device, policy_for
from core.nn.platform import device_name, memory_figures, torch_facts
from core.runs.queue import DeviceRequest, StopWaiting, hold, visible_gpus
from core.processes import process_start_time
from core.runs.run import ACTIVE, PruneRequested, Run, StopFlag, StopRequested, begin
from core.runs.speeds import record_run_speed
from core.runs.watch import Heartbeat


EVALS_IN_A_TIME_LIMIT = 25  # a time-limited run evaluates at most about this often, and at its end,
EVAL_SHARE = 0.1            # and evaluating and saving take at most about this share of its training time
STEP_LINE_SECONDS = 3.0     # a "step" metrics line at least this often (and every log_every steps): live charts
WARMUP_STEPS = 3            # a session's first steps compile and tune kernels: the watcher allows them longer


class RunHooks(Protocol):
    """Who listens to a run's loop besides its folder: a search's trial (core.search.trial)."""

    def on_epoch(self, epoch: int, accuracy: float) -> None:
        """After each epoch's checkpoint; may raise PruneRequested."""

    def on_end(self, status: dict) -> None:
        """The run's final status, once it is written."""


# ---- the run ----------------------------------------------------------------------------------------

def log(run: Run, world: World, message: str) -> None:
    """A line in train.log: rank 0 keeps the log of the run."""
    if not world.is_main:
        return
    line = run.log(message)
    if sys.stderr.isatty():
        print(line, file=sys.stderr)


def train(run: Run, device_request: str = "auto", data: str | None = None, epochs: int | None = None,
          gpus: str | None = None, stop: StopFlag | None = None,
          open_hooks: Callable[[], RunHooks] | None = None) -> dict:
    """Train (or resume) a run in this process, or in this one of the processes torchrun started;
    returns the final status. Never raises for the run's own failures: they end up in status.json
    as `failed` with the reason. Only rank 0 writes the run folder. `stop`: the process's flag, when
    it set one up before importing this module. `open_hooks`: who listens to this run (a search's
    trial); opened here, so that failing to open them fails the run like any other cause."""
    stop = stop or StopFlag()
    world = World.from_env()
    record = run.update_status if world.is_main else (lambda **fields: fields)
    beat = Heartbeat(run, enabled=world.local_rank == 0)  # each machine's first process, for its machine's watcher
    hooks = None
    try:
        if world.size == 1:
            begin(run, device_request)  # its pid, and a Stop that came before it
        else:  # a Stop signals torchrun's agent, which passes it on to every process
            record(pid=os.getppid(), pid_start=process_start_time(os.getppid()), device_request=device_request)
        record(host=socket.gethostname(), world_size=world.size)
        if open_hooks is not None and world.size == 1:
            hooks = open_hooks()
        cfg = session_config(run, world, epochs, data)
        with training_device(run, world, device_request, gpus, stop, record, beat) as device:
            start_session(run, world, cfg, device, record, beat)
            fit(run, cfg, device, stop, world, beat, hooks)
        status = record(state="finished", ended=time.time())
    except (StopRequested, StopWaiting):
        log(run, world, "stopped on request; resume to continue")
        status = record(state="stopped", ended=time.time(), waiting_for=None)
    except PruneRequested as e:
        log(run, world, f"pruned by the search after epoch {e.epoch}: its validation accuracy was not promising")
        status = record(state="pruned", ended=time.time(), pruned_at=e.epoch, waiting_for=None)
    except Exception as e:
        status = failed(run, world, e, record)
    finally:
        world.leave()
    if hooks is not None:
        hooks.on_end(status)
    return status


def session_config(run: Run, world: World, epochs: int | None, data: str | None) -> RunConfig:
    """The run's config for this session: `epochs` (resuming with more or fewer) is saved as the run's from now
    on; `data` is this session's alone."""
    cfg = run.config()
    if epochs and epochs != cfg.train.epochs:
        cfg = cfg.replace_train(epochs=epochs)
        if world.is_main:
            run.save_config(cfg)
    if data:
        cfg = RunConfig(cfg.arch, cfg.train, data, cfg.preset, cfg.budget, cfg.allow_over_budget)
    return cfg


@contextlib.contextmanager
def training_device(run: Run, world: World, device_request: str, gpus: str | None, stop: StopFlag, record,
                    beat: Heartbeat) -> Iterator[torch.device]:
    """The device this process trains on, held while it trains: one process waits its turn in the machine's queue
    (queued, the heartbeat says waiting); under torchrun our launcher (or the cluster's scheduler) holds them."""
    if world.size > 1:
        kind = pick_device(device_request).type
        if kind == "mps":
            raise StudioError("Apple's GPU (mps) trains as one process: torch has no DistributedDataParallel "
                              "for it; start the run without torchrun")
        yield pick_device(f"cuda:{world.local_rank}") if kind == "cuda" else torch.device("cpu")
        return

    def on_wait(message: str) -> None:
        record(state="queued", waiting_for=message)
        beat.phase("waiting")
        print(f"queued: {message}", flush=True)

    device_request = usable_request(run, world, device_request, gpus, record)
    with hold(DeviceRequest.parse(device_request, gpus), str(run.dir), stop, on_wait) as held:
        device = pick_device(held[0] if held[0] in ("cpu", "mps") else f"cuda:{visible_gpus().index(held[0])}")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # kernels, cuDNN's handles and memory figures on this GPU, not 0
        yield device


def start_session(run: Run, world: World, cfg: RunConfig, device: torch.device, record, beat: Heartbeat) -> None:
    """Join the other processes, say `running`, and record what makes this session: commit, command, machine,
    libraries, data (core.runs.record) and the arithmetic."""
    world.join(device)
    beat.phase("loading data")
    record(state="running", device=str(device), started=time.time(), waiting_for=None, error=None,
           device_name=device_name(device))
    policy = policy_for(device, cfg.train.precision)
    used = {"setting": cfg.train.precision, "autocast": policy.name, "grad_scaler": policy.scaler,
            "why": policy.why}
    if world.is_main:
        run.record_start(torch_facts(device, used), world.size, cfg.train.seed, cfg.data)
    log(run, world, f"training on {device} with torch {torch.__version__}"
                    + (f", {world.size} processes" if world.size > 1 else ""))
    log(run, world, f"precision: {policy.name}" + (" with a GradScaler" if policy.scaler else "")
                    + f" ({policy.why})")


def failed(run: Run, world: World, error: Exception, record) -> dict:
    """The status of a run that failed: a StudioError says why itself; anything else (a bug or the machine) keeps
    its traceback in the log and its gist in the status. Under torchrun, the launcher names the process that failed
    first: a process that only lost contact with it says no more than that."""
    if isinstance(error, StudioError):
        log(run, world, f"failed: {error}")
        if world.size > 1:
            record_error(error)
        return record(state="failed", ended=time.time(), error=str(error), waiting_for=None)
    log(run, world, traceback.format_exc())
    reason = out_of_memory(run, error, world) if isinstance(error, torch.OutOfMemoryError) else \
        f"{type(error).__name__}: {error}"
    if world.size > 1:
        if not world.is_main:  # torchrun's output, which the launcher keeps in train.log
            print(f"rank {world.rank}: {traceback.format_exc()}", file=sys.stderr, flush=True)
        record_error(error)
        if is_lost_peer(error):
            reason = f"rank {world.rank} lost contact with another process of the run ({type(error).__name__})"
            if run.status().get("state") not in ACTIVE:  # a root cause is already written
                return {"state": "failed", "error": reason}
    return record(state="failed", ended=time.time(), error=reason, waiting_for=None)


def usable_request(run: Run, world: World, device_request: str, gpus: str | None, record) -> str:
    """The device request to queue for: "auto" becomes the device it means here, the CPU when a GPU is there that
    this torch cannot run (said in the log and the status, which the Train page shows); a GPU asked for by name
    that torch cannot reach fails the run with the line that names the fix."""
    note = None
    if device_request == "auto" and not gpus:
        device_request, problem = auto_device()
        if problem:
            note = f"{problem}. Training on the {'CPU' if device_request == 'cpu' else 'Apple GPU'} instead."
            log(run, world, note)
    elif device_request not in ("cpu", "mps") and (problem := driver_problem()):
        raise StudioError(problem)
    record(device_note=note)  # a session's own: the last one's note goes
    return device_request


def out_of_memory(run: Run, error: torch.OutOfMemoryError, world: World) -> str:
    """The failure of a run that ran out of memory: its batch, the device's memory, and a batch that should fit,
    as the command that resumes with it."""
    batch = run.config().train.batch_size
    device = torch.device(run.status().get("device") or "cpu")
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    figures = memory_figures(device, str(error))
    gib = 2 ** 30
    memory = f"{figures['used'] / gib:.1f} GiB used, {figures['free'] / gib:.1f} GiB free of " \
             f"{figures['total'] / gib:.1f} GiB on {device}" if figures else f"on {device}"
    fits = smaller_batch(batch, figures, world.size)
    return (f"out of memory at batch {batch} ({memory}): resume with a batch of {fits} "
            f"(python -m core train --resume {run.dir} --batch-size {fits}, or Resume on the Train page with "
            f"batch {fits})")


def smaller_batch(batch: int, figures: dict | None, processes: int) -> int:
    """A global batch that should fit: activations grow with the batch, so it shrinks by what the failed step
    needed over what the device has (with a margin), at least to half; a multiple of 8 per process where it can."""
    share = 0.5
    if figures and figures.get("peak"):
        share = min(0.5, 0.85 * figures["total"] / figures["peak"])
    per_process = max(1, int(batch / processes * share))
    per_process = per_process // 8 * 8 or per_process
    return per_process * processes


# ---- the loop -----------------------------------------------------------------------------------------

@dataclass
class Position:
    """Where a run stands, as every checkpoint records it; resuming starts here."""
    epoch: int = 0           # whole epochs done
    step: int = 0            # steps done into `epoch`
    best_acc: float = -1.0
    elapsed: float = 0.0     # wall time of every session until the last save
    trained: float = 0.0     # time spent in training steps alone: what a time_limit counts

    def epochs_done(self, steps_per_epoch: int) -> float:
        return self.epoch + self.step / steps_per_epoch


@dataclass
class Batches:
    """The training split cut into whole global batches (static shapes, no tiny last step), and this
    process's share of each."""
    split: Split
    batch_size: int          # global, over all processes
    world: World
    flip_alternately: bool = False  # the alternating_flip augmentation: mirrored by the epoch's parity

    @property
    def steps_per_epoch(self) -> int:
        return len(self.split) // self.batch_size

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.world.size

    def epoch(self, epoch: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's images and labels for an epoch, in step order, on the device. The order depends
        only on (seed, epoch), so a resumed epoch replays it, with any world size; so do alternating flips."""
        order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        mine = order[:self.steps_per_epoch * self.batch_size].view(
            self.steps_per_epoch, self.world.size, self.local_batch)[:, self.world.rank].reshape(-1)
        images = self.split.images[mine]
        if self.flip_alternately:
            images = alternating_flip(images, mine, len(self.split), epoch, seed)
        return images.to(device), self.split.labels[mine].to(device)


class EpochTally:
    """An epoch's training loss, right answers and images so far, summed on the device: no host sync."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.images = 0
        self.device = device

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.images += len(labels)

    def totals(self, world: World) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) over every process: a host sync."""
        loss, right, images = world.sum(torch.stack([
            self.loss, self.correct.float(), torch.tensor(float(self.images), device=self.device)])).tolist()
        return loss / max(images, 1), right / max(images, 1), int(images)


def progress(t: TrainConfig, global_step: int, trained: float, total_steps: int) -> float:
    """The share of the training done (0 to 1): of its steps, or with a time limit, of its time."""
    return min(1.0, trained / t.time_limit if t.time_limit else global_step / total_steps)


def learning_rate(t: TrainConfig, global_step: int, trained: float, total_steps: int, steps_per_epoch: int) -> float:
    """The schedule's lr at a step; with a time limit, at the share of the time used instead."""
    if t.time_limit:
        return lr_at(t, min(1.0, trained / t.time_limit) * total_steps, total_steps, steps_per_epoch)
    return lr_at(t, global_step, total_steps, steps_per_epoch)


def evaluation_split(dataset: Dataset, t: TrainConfig) -> tuple[Split, Split, str]:
    """(what to train on, what to evaluate on, its name): the test split, or a validation split carved from
    train when the config asks for one (a search's trials are never scored on test)."""
    if t.val_fraction > 0:
        return *split_validation(dataset.train, t.val_fraction, t.seed), "val"
    return dataset.train, dataset.test, "test"


@dataclass
class Session:
    """One session of a run's training, from its `last` checkpoint on: what its steps, evaluations and checkpoints
    share."""
    run: Run
    cfg: RunConfig
    device: torch.device
    world: World
    beat: Heartbeat
    dataset: Dataset
    eval_split: Split
    eval_name: str
    batches: Batches
    trainer: Trainer
    at: Position
    meta: dict                  # what every checkpoint says of the run: design, classes, normalisation, TTA, data
    started: float = 0.0        # perf_counter when the session's training began
    elapsed_before: float = 0.0  # wall time of the sessions before it
    steps: int = 0              # steps trained this session: the first few warm up

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started


@dataclass
class EpochFigures:
    """What an epoch's training (or its part up to the time limit) says in its metrics line."""
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr: float
    out_of_time: bool


def fit(run: Run, cfg: RunConfig, device: torch.device, stop: StopFlag, world: World, beat: Heartbeat,
        hooks: RunHooks | None = None) -> None:
    """Train `run` from where its `last` checkpoint left off to the end of its epochs or time limit."""
    s = open_session(run, cfg, device, world, beat)
    t, at = cfg.train, s.at
    s.started, s.elapsed_before, next_eval = time.perf_counter(), at.elapsed, 0.0
    beat.phase("warming up", epoch=at.epoch, step=at.step)
    last = None  # the last epoch's evaluation: of the final weights, once the loop ends
    for epoch in itertools.count(at.epoch) if t.time_limit else range(at.epoch, t.epochs):
        figures = train_epoch(s, epoch, stop)
        if t.time_limit and at.trained < next_eval and not figures.out_of_time:
            continue  # a GPU's epoch can take a second, a CPU's 6-view evaluation most of an epoch's time
        paused = time.perf_counter()
        last = end_epoch(s, figures)
        if t.time_limit:
            next_eval = next_evaluation(at.trained, t.time_limit, time.perf_counter() - paused)
        beat.phase("training", epoch=at.epoch, step=at.step)
        if hooks is not None:
            hooks.on_epoch(at.epoch, last.accuracy)
        if figures.out_of_time:
            break
    write_results(s, last or evaluate_now(s))  # a resume of a run that had ended trains nothing


def next_evaluation(trained: float, time_limit: float, pause: float) -> float:
    """When a time-limited run at `trained` seconds of training, which just spent `pause` seconds evaluating and
    saving, evaluates next: after time_limit / EVALS_IN_A_TIME_LIMIT more seconds of training, or after more where
    the pause would otherwise take over EVAL_SHARE of the time (6-view TTA on a CPU: 25-45 s an evaluation)."""
    return trained + max(time_limit / EVALS_IN_A_TIME_LIMIT, pause / EVAL_SHARE)


def open_session(run: Run, cfg: RunConfig, device: torch.device, world: World, beat: Heartbeat) -> Session:
    """The data, cut into batches, the trainer, and where the run stands: at the start, or where `last` left off."""
    t = cfg.train
    torch.manual_seed(t.seed)
    # data: the training split on the host, cut into batches; each epoch, this process's shard goes to the device
    dataset = load_dataset(cfg.data)
    train_split, eval_split, eval_name = evaluation_split(dataset, t)
    batches = Batches(train_split, min(t.batch_size, len(train_split)), world, "alternating_flip" in t.augment)
    check(cfg.replace_train(batch_size=batches.batch_size), device.type, world.size)
    log(run, world, f"data: {dataset.source}; {len(train_split):,} training images, {len(eval_split):,} "
                    f"{eval_name} images" + (f"; {batches.local_batch} of each batch of {batches.batch_size} per "
                                             f"process" if world.size > 1 else ""))
    trainer = Trainer(cfg, device, world, train_split.images)
    at = resume(run, world, trainer, batches) if run.has_checkpoint("last") else Position()
    meta = {"spec": cfg.arch.to_dict(), "classes": list(dataset.classes), **trainer.augment.normalizer.stats,
            "eval_split": eval_name, "tta_flip": t.tta_flip, "tta_shift": t.tta_shift, "data": dataset.source}
    return Session(run, cfg, device, world, beat, dataset, eval_split, eval_name, batches, trainer, at, meta)


def resume(run: Run, world: World, trainer: Trainer, batches: Batches) -> Position:
    """Load the `last` checkpoint's training state into `trainer`; returns its position, carried over to this
    session's batch when a resume changed it."""
    tensors, plain, meta = load_train_state(run.checkpoints, "last")
    trainer.load_state(tensors, plain)
    at = Position(meta["epoch"], meta["step"], meta.get("best_acc", -1.0), meta["elapsed"], meta.get("trained", 0.0))
    log(run, world, f"resumed at epoch {at.epoch} step {at.step}")
    saved_batch = meta.get("batch_size", batches.batch_size)
    if saved_batch != batches.batch_size:  # the same images of the epoch done, in steps of the new batch
        at.step = min(at.step * saved_batch // batches.batch_size, batches.steps_per_epoch - 1)
        log(run, world, f"batch {saved_batch} -> {batches.batch_size}: continuing at epoch {at.epoch} step "
                        f"{at.step} of {batches.steps_per_epoch}")
    return at


def train_epoch(s: Session, epoch: int, stop: StopFlag) -> EpochFigures:
    """Train `epoch` from where the run stands to its end, or to the time limit; moves the position there. On a
    Stop, saves `last` and raises StopRequested."""
    t, at, world = s.cfg.train, s.at, s.world
    steps_per_epoch, local = s.batches.steps_per_epoch, s.batches.local_batch
    total_steps = t.epochs * steps_per_epoch
    s.trainer.model.train()
    images, labels = s.batches.epoch(epoch, t.seed, s.device)
    tally, epoch_start = EpochTally(s.device), time.perf_counter()
    last_line = epoch_start
    first = at.step if epoch == at.epoch else 0
    out_of_time, step = False, first - 1
    lr = learning_rate(t, epoch * steps_per_epoch + first, at.trained, total_steps, steps_per_epoch)
    for step in range(first, steps_per_epoch):
        global_step = epoch * steps_per_epoch + step
        # augmentation and dropout, replayable: each process draws its own
        torch.manual_seed((t.seed * 1_000_003 + global_step) * world.size + world.rank)
        x, y = images[step * local:(step + 1) * local], labels[step * local:(step + 1) * local]
        trained_now = at.trained + time.perf_counter() - epoch_start  # host clock: no sync
        lr = learning_rate(t, global_step, trained_now, total_steps, steps_per_epoch)
        loss, logits = s.trainer.step(x, y, lr, progress(t, global_step, trained_now, total_steps))
        tally.add(loss, logits, y)
        s.steps += 1
        if s.steps == WARMUP_STEPS:
            s.beat.phase("training")
        s.beat.step(epoch, step + 1)
        now = time.perf_counter()
        # the only host sync inside an epoch; by the clock on one process only (all must sync together)
        if (global_step + 1) % t.log_every == 0 or (world.size == 1 and now - last_line >= STEP_LINE_SECONDS):
            last_line = now
            write_step_line(s, tally, epoch + (step + 1) / steps_per_epoch, global_step + 1, lr, epoch_start)
        if world.any(stop()):  # all processes stop after the same step
            at.epoch, at.step = epoch, step + 1
            at.trained += time.perf_counter() - epoch_start
            at.elapsed = s.elapsed()
            checkpoint(s, "last", None)
            raise StopRequested
        if t.time_limit and trained_now >= t.time_limit:
            out_of_time = True
            break
    if out_of_time or (not t.time_limit and epoch == t.epochs - 1 and step + 1 == steps_per_epoch):
        s.trainer.finish()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    train_loss, train_acc, images_seen = tally.totals(world)
    seconds = time.perf_counter() - epoch_start
    at.trained += seconds
    at.epoch, at.step = (epoch + 1, 0) if step + 1 == steps_per_epoch else (epoch, step + 1)
    return EpochFigures(train_loss, train_acc, images_seen, seconds, lr, out_of_time)


def write_step_line(s: Session, tally: EpochTally, epoch: float, step: int, lr: float, epoch_start: float) -> None:
    """A "step" metrics line, for the live charts: the epoch's loss and speed so far (a host sync)."""
    train_loss, _, images_seen = tally.totals(s.world)
    if s.world.is_main:
        s.run.append_metrics({"kind": "step", "epoch": epoch, "step": step, "train_loss": train_loss, "lr": lr,
                              "images_per_s": images_seen / (time.perf_counter() - epoch_start),
                              "elapsed": s.elapsed()})


def end_epoch(s: Session, figures: EpochFigures) -> Evaluation:
    """The epoch's end (or the time limit's): evaluate, write its metrics and log lines, save `best` when it is the
    best yet, and `last`; returns the evaluation."""
    t, at, world = s.cfg.train, s.at, s.world
    result = evaluate_now(s)  # every process evaluates: no process waits for another
    at.elapsed = s.elapsed()
    steps_per_epoch = s.batches.steps_per_epoch
    line = {"kind": "epoch", "epoch": at.epochs_done(steps_per_epoch),
            "step": at.epoch * steps_per_epoch + at.step, "train_loss": figures.loss, "train_acc": figures.accuracy,
            "eval_split": s.eval_name, "eval_loss": result.loss, "eval_acc": result.accuracy,
            "lr": figures.lr, "images_per_s": figures.images / figures.seconds, "elapsed": at.elapsed,
            "trained": at.trained}
    if world.is_main:
        s.run.append_metrics(line)
    keep_speed(s, line["images_per_s"])
    of = f" ({at.trained:.0f} of {t.time_limit:g} s)" if t.time_limit else f"/{t.epochs}"
    log(s.run, world, f"epoch {line['epoch']:.4g}{of}: train loss {figures.loss:.3f} acc {figures.accuracy:.3f}, "
                      f"{s.eval_name} loss {result.loss:.3f} acc {result.accuracy:.4f}, "
                      f"{line['images_per_s']:.0f} img/s" + scaler_text(s.trainer))
    if result.accuracy > at.best_acc:
        at.best_acc = result.accuracy
        checkpoint(s, "best", result.accuracy)
    checkpoint(s, "last", result.accuracy)
    if world.is_main:
        s.run.update_status(epoch=line["epoch"], best_acc=at.best_acc)
    return result


def keep_speed(s: Session, images_per_s: float) -> None:
    """A speed of one device in the arithmetic "auto" gives it, for estimates (fp16 on a CPU would be tenfold too
    slow); no reason to fail a run."""
    if s.world.size == 1 and s.trainer.policy[:2] == policy_for(s.device, "auto")[:2]:
        with contextlib.suppress(OSError):
            record_run_speed(str(s.device), device_name(s.device), images_per_s, count(s.cfg.arch).macs, s.run.name,
                             s.cfg)


def evaluate_now(s: Session) -> Evaluation:
    t, at = s.cfg.train, s.at
    s.beat.phase("evaluating", epoch=at.epoch, step=at.step)
    return evaluate(s.trainer.eval_model, s.eval_split.images, s.eval_split.labels, s.trainer.augment.normalizer,
                    s.device, len(s.dataset.classes), t.tta_flip, t.precision,
                    on_batch=lambda: s.beat.step(at.epoch, at.step), tta_shift=t.tta_shift)


def checkpoint(s: Session, tag: str, accuracy: float | None) -> None:
    """Checkpoint `tag`: the weights to use, plus everything needed to resume. Rank 0 writes."""
    at = s.at
    s.beat.phase("saving", epoch=at.epoch, step=at.step)
    if s.world.is_main:
        tensors, plain = s.trainer.state()
        meta = s.meta | {"epoch": at.epoch, "step": at.step, "eval_acc": accuracy, "batch_size": s.batches.batch_size,
                         "best_acc": at.best_acc, "elapsed": at.elapsed, "trained": at.trained, "saved": time.time()}
        save_checkpoint(s.run.checkpoints, tag, s.trainer.eval_model.state_dict(), meta, train_state=tensors,
                        train_meta=plain)


def write_results(s: Session, final: Evaluation) -> None:
    """The run's results: the final weights' evaluation, per class, and its confusion matrix."""
    if s.world.is_main:
        classes = list(s.dataset.classes)
        s.run.write_results({
            "eval_split": s.eval_name, "accuracy": final.accuracy, "loss": final.loss, "classes": classes,
            "per_class_accuracy": dict(zip(s.dataset.classes, final.per_class_accuracy)),
            "confusion": final.confusion.tolist(), "best_acc": s.at.best_acc, "data": s.dataset.source,
            "checkpoint": "last"})


def scaler_text(trainer: Trainer) -> str:
    """fp16's GradScaler: its scale, and the steps it skipped on inf/nan gradients this session."""
    if trainer.scaler is None:
        return ""
    return f"; fp16 loss scale {trainer.scaler.get_scale():g}, {int(trainer.skipped)} step(s) skipped this session"
