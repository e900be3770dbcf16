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
from collections.abc import Callable
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
from core.files import append_line, read_json, write_json
from core.nn.checkpoint import load_train_state, save_checkpoint
from core.nn.gpu import driver_problem
from core.nn.infer import Evaluation, auto_device, evaluate, pick_device, policy_for
from core.nn.platform import device_name, memory_figures, torch_facts
from core.runs.record import write_start
from core.runs.queue import DeviceRequest, StopWaiting, hold, visible_gpus
from core.runs.run import ACTIVE, PruneRequested, Run, RunError, StopFlag, StopRequested, begin, process_start_time
from core.runs.speeds import record_run_speed
from core.runs.watch import Heartbeat


EVALS_IN_A_TIME_LIMIT = 25  # a time-limited run evaluates about this often, and at its end
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
    line = f"{time.strftime('%H:%M:%S')} {message}"
    if not world.is_main:
        return
    with open(run.log_path, "a") as f:
        f.write(line + "\n")
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
    beat = Heartbeat(run, enabled=world.is_main)
    hooks = None

    def on_wait(message: str) -> None:
        record(state="queued", waiting_for=message)
        beat.phase("waiting")
        print(f"queued: {message}", flush=True)

    try:
        if world.size == 1:
            begin(run, device_request)  # its pid, and a Stop that came before it
        else:  # a Stop signals torchrun's agent, which passes it on to every process
            record(pid=os.getppid(), pid_start=process_start_time(os.getppid()), device_request=device_request)
        record(host=socket.gethostname(), world_size=world.size)
        if open_hooks is not None and world.size == 1:
            hooks = open_hooks()
        cfg = run.config()
        if epochs and epochs != cfg.train.epochs:  # resuming with more (or fewer) epochs
            cfg = cfg.replace_train(epochs=epochs)
            if world.is_main:
                write_json(run.config_path, {**cfg.to_dict(), "params": read_json(run.config_path)["params"]})
        if data:
            cfg = RunConfig(cfg.arch, cfg.train, data, cfg.preset, cfg.budget, cfg.allow_over_budget)
        if world.size > 1:  # torchrun started us: our launcher (or the cluster's scheduler) holds the devices
            kind = pick_device(device_request).type
            if kind == "mps":
                raise StudioError("Apple's GPU (mps) trains as one process: torch has no DistributedDataParallel "
                                  "for it; start the run without torchrun")
            device = pick_device(f"cuda:{world.local_rank}") if kind == "cuda" else torch.device("cpu")
            devices = contextlib.nullcontext()
        else:
            device_request = usable_request(run, world, device_request, gpus, record)
            devices = hold(DeviceRequest.parse(device_request, gpus), str(run.dir), stop, on_wait)
        with devices as held:
            if world.size == 1:
                device = pick_device(held[0] if held[0] in ("cpu", "mps") else f"cuda:{visible_gpus().index(held[0])}")
                if device.type == "cuda":
                    torch.cuda.set_device(device)  # kernels, cuDNN's handles and memory figures on this GPU, not 0
            world.join(device)
            beat.phase("loading data")
            record(state="running", device=str(device), started=time.time(), waiting_for=None, error=None,
                   device_name=device_name(device))
            policy = policy_for(device, cfg.train.precision)
            used = {"setting": cfg.train.precision, "autocast": policy.name, "grad_scaler": policy.scaler,
                    "why": policy.why}
            if world.is_main:  # what made this session: commit, command, machine, libraries, data (core.runs.record)
                write_start(run.record_path, torch_facts(device, used), world.size, cfg.train.seed, cfg.data)
            log(run, world, f"training on {device} with torch {torch.__version__}"
                            + (f", {world.size} processes" if world.size > 1 else ""))
            log(run, world, f"precision: {policy.name}" + (" with a GradScaler" if policy.scaler else "")
                            + f" ({policy.why})")
            fit(run, cfg, device, stop, world, beat, hooks)
        status = record(state="finished", ended=time.time())
    except (StopRequested, StopWaiting):
        log(run, world, "stopped on request; resume to continue")
        status = record(state="stopped", ended=time.time(), waiting_for=None)
    except PruneRequested as e:
        log(run, world, f"pruned by the search after epoch {e.epoch}: its validation accuracy was not promising")
        status = record(state="pruned", ended=time.time(), pruned_at=e.epoch, waiting_for=None)
    except StudioError as e:
        log(run, world, f"failed: {e}")
        if world.size > 1:
            record_error(e)
        status = record(state="failed", ended=time.time(), error=str(e), waiting_for=None)
    except Exception as e:  # a bug or the machine: keep the traceback in the log, the gist in the status
        log(run, world, traceback.format_exc())
        reason = out_of_memory(run, e, world) if isinstance(e, torch.OutOfMemoryError) else \
            f"{type(e).__name__}: {e}"
        if world.size > 1:
            if not world.is_main:  # torchrun's output, which the launcher keeps in train.log
                print(f"rank {world.rank}: {traceback.format_exc()}", file=sys.stderr, flush=True)
            record_error(e)
            if is_lost_peer(e):  # the launcher names the process that failed first; say no more than this
                reason = f"rank {world.rank} lost contact with another process of the run ({type(e).__name__})"
                if run.status().get("state") not in ACTIVE:  # a root cause is already written
                    return {"state": "failed", "error": reason}
        status = record(state="failed", ended=time.time(), error=reason, waiting_for=None)
    finally:
        world.leave()
    if hooks is not None:
        hooks.on_end(status)
    return status


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


def save(run: Run, world: World, trainer: Trainer, tag: str, meta: dict) -> None:
    """Checkpoint `tag`: the weights to use, plus everything needed to resume. Rank 0 writes."""
    if world.is_main:
        tensors, plain = trainer.state()
        save_checkpoint(run.checkpoints, tag, trainer.eval_model.state_dict(), meta, train_state=tensors,
                        train_meta=plain)


def fit(run: Run, cfg: RunConfig, device: torch.device, stop: StopFlag, world: World, beat: Heartbeat,
        hooks: RunHooks | None = None) -> None:
    """Train `run` from where its `last` checkpoint left off to the end of its epochs or time limit."""
    t = cfg.train
    torch.manual_seed(t.seed)

    # data: the training split on the host, cut into batches; each epoch, this process's shard goes to the device
    dataset = load_dataset(cfg.data)
    train_split, eval_split, eval_name = evaluation_split(dataset, t)
    batches = Batches(train_split, min(t.batch_size, len(train_split)), world, "alternating_flip" in t.augment)
    check(cfg.replace_train(batch_size=batches.batch_size), device.type, world.size)
    steps_per_epoch, local = batches.steps_per_epoch, batches.local_batch
    total_steps = t.epochs * steps_per_epoch
    log(run, world, f"data: {dataset.source}; {len(train_split):,} training images, {len(eval_split):,} "
                    f"{eval_name} images" + (f"; {local} of each batch of {batches.batch_size} per process"
                                             if world.size > 1 else ""))

    trainer = Trainer(cfg, device, world, train_split.images)
    at = Position()
    if (run.checkpoints / "last.json").exists():  # resume where `last` left off
        tensors, plain, meta = load_train_state(run.checkpoints, "last")
        trainer.load_state(tensors, plain)
        at = Position(meta["epoch"], meta["step"], meta.get("best_acc", -1.0), meta["elapsed"],
                      meta.get("trained", 0.0))
        log(run, world, f"resumed at epoch {at.epoch} step {at.step}")
        saved_batch = meta.get("batch_size", batches.batch_size)
        if saved_batch != batches.batch_size:  # the same images of the epoch done, in steps of the new batch
            at.step = min(at.step * saved_batch // batches.batch_size, steps_per_epoch - 1)
            log(run, world, f"batch {saved_batch} -> {batches.batch_size}: continuing at epoch {at.epoch} step "
                            f"{at.step} of {steps_per_epoch}")
    run_meta = {"spec": cfg.arch.to_dict(), "classes": list(dataset.classes), **trainer.augment.normalizer.stats,
                "eval_split": eval_name, "tta_flip": t.tta_flip, "tta_shift": t.tta_shift, "data": dataset.source}

    def evaluate_now() -> Evaluation:
        beat.phase("evaluating", epoch=at.epoch, step=at.step)
        return evaluate(trainer.eval_model, eval_split.images, eval_split.labels, trainer.augment.normalizer,
                        device, len(dataset.classes), t.tta_flip, t.precision,
                        on_batch=lambda: beat.step(at.epoch, at.step), tta_shift=t.tta_shift)

    def checkpoint(tag: str, acc: float | None) -> None:
        beat.phase("saving", epoch=at.epoch, step=at.step)
        save(run, world, trainer, tag, run_meta | {"epoch": at.epoch, "step": at.step, "eval_acc": acc,
                                                    "batch_size": batches.batch_size,
                                                    "best_acc": at.best_acc, "elapsed": at.elapsed,
                                                    "trained": at.trained, "saved": time.time()})

    session_start, elapsed_before, next_eval = time.perf_counter(), at.elapsed, 0.0
    steps_this_session = 0
    beat.phase("warming up", epoch=at.epoch, step=at.step)
    for epoch in itertools.count(at.epoch) if t.time_limit else range(at.epoch, t.epochs):
        trainer.model.train()
        images, labels = batches.epoch(epoch, t.seed, device)
        tally, epoch_start = EpochTally(device), time.perf_counter()
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
            loss, logits = trainer.step(x, y, lr, progress(t, global_step, trained_now, total_steps))
            tally.add(loss, logits, y)
            steps_this_session += 1
            if steps_this_session == WARMUP_STEPS:
                beat.phase("training")
            beat.step(epoch, step + 1)
            now = time.perf_counter()
            # the only host sync inside an epoch; by the clock on one process only (all must sync together)
            if (global_step + 1) % t.log_every == 0 or (world.size == 1 and now - last_line >= STEP_LINE_SECONDS):
                last_line = now
                train_loss, _, images_seen = tally.totals(world)
                if world.is_main:
                    append_metrics(run, {"kind": "step", "epoch": epoch + (step + 1) / steps_per_epoch,
                                         "step": global_step + 1, "train_loss": train_loss, "lr": lr,
                                         "images_per_s": images_seen / (time.perf_counter() - epoch_start),
                                         "elapsed": elapsed_before + time.perf_counter() - session_start})
            if world.any(stop()):  # all processes stop after the same step
                at.epoch, at.step = epoch, step + 1
                at.trained += time.perf_counter() - epoch_start
                at.elapsed = elapsed_before + time.perf_counter() - session_start
                checkpoint("last", None)
                raise StopRequested
            if t.time_limit and trained_now >= t.time_limit:
                out_of_time = True
                break

        # the epoch's end (or the time limit's): its figures, an evaluation, checkpoints
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_loss, train_acc, images_seen = tally.totals(world)
        train_time = time.perf_counter() - epoch_start
        at.trained += train_time
        at.epoch, at.step = (epoch + 1, 0) if step + 1 == steps_per_epoch else (epoch, step + 1)
        if t.time_limit:  # epochs can take a second on a GPU: evaluate and save a few times, not after each
            if at.trained < next_eval and not out_of_time:
                continue
            next_eval = at.trained + t.time_limit / EVALS_IN_A_TIME_LIMIT
        result = evaluate_now()  # every process evaluates: no process waits for another
        at.elapsed = elapsed_before + time.perf_counter() - session_start
        line = {"kind": "epoch", "epoch": at.epochs_done(steps_per_epoch),
                "step": at.epoch * steps_per_epoch + at.step, "train_loss": train_loss, "train_acc": train_acc,
                "eval_split": eval_name, "eval_loss": result.loss, "eval_acc": result.accuracy,
                "lr": lr, "images_per_s": images_seen / train_time, "elapsed": at.elapsed, "trained": at.trained}
        if world.is_main:
            append_metrics(run, line)
        # a speed of one device in the arithmetic "auto" gives it, for estimates (fp16 on a CPU would be tenfold
        # too slow); no reason to fail a run
        if world.size == 1 and trainer.policy[:2] == policy_for(device, "auto")[:2]:
            with contextlib.suppress(OSError):
                record_run_speed(str(device), device_name(device), line["images_per_s"], count(cfg.arch).macs,
                                 run.name)
        of = f" ({at.trained:.0f} of {t.time_limit:g} s)" if t.time_limit else f"/{t.epochs}"
        log(run, world, f"epoch {line['epoch']:.4g}{of}: train loss {train_loss:.3f} acc {train_acc:.3f}, "
                        f"{eval_name} loss {result.loss:.3f} acc {result.accuracy:.4f}, "
                        f"{line['images_per_s']:.0f} img/s" + scaler_text(trainer))
        if result.accuracy > at.best_acc:
            at.best_acc = result.accuracy
            checkpoint("best", result.accuracy)
        checkpoint("last", result.accuracy)
        if world.is_main:
            run.update_status(epoch=line["epoch"], best_acc=at.best_acc)
        beat.phase("training", epoch=at.epoch, step=at.step)
        if hooks is not None:
            hooks.on_epoch(at.epoch, result.accuracy)
        if out_of_time:
            break

    final = evaluate_now()
    if world.is_main:
        write_json(run.results_path, {
            "eval_split": eval_name, "accuracy": final.accuracy, "loss": final.loss, "classes": list(dataset.classes),
            "per_class_accuracy": dict(zip(dataset.classes, final.per_class_accuracy)),
            "confusion": final.confusion.tolist(), "best_acc": at.best_acc, "data": dataset.source,
            "checkpoint": "last"})


def scaler_text(trainer: Trainer) -> str:
    """fp16's GradScaler: its scale, and the steps it skipped on inf/nan gradients this session."""
    if trainer.scaler is None:
        return ""
    return f"; fp16 loss scale {trainer.scaler.get_scale():g}, {int(trainer.skipped)} step(s) skipped this session"


def append_metrics(run: Run, line: dict) -> None:
    try:
        append_line(run.metrics_path, line)
    except OSError as e:
        raise RunError(f"cannot write {run.metrics_path} ({e.strerror}); free disk space, then resume") from None
