"""Training: one loop, top to bottom, in the process of one run (`python -m core train`).

The dataset sits on the training device as uint8 and is augmented there in batches. The model runs
channels_last, in bf16 autocast where the hardware has it (CUDA, AMX CPUs), with a fused optimizer
step on CUDA. SIGTERM (Stop) lets
the current step finish, saves `last`, and ends the run as `stopped`; resuming continues at the
saved epoch and step, with the same data order. With `time_limit` the run trains for that many seconds
instead of its epochs, and the schedule drawn over its epochs is stretched over that time. Under torchrun
the same loop runs in every process, with DistributedDataParallel; core/engine/distributed.py says what that
means for batch, order and stop.
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

import torch

from core.data.datasets import load_dataset, split_validation
from core.design.budget import count
from core.design.config import RunConfig
from core.engine.distributed import World, check, is_lost_peer, record_error
from core.engine.optim import lr_at
from core.engine.trainer import Trainer
from core.errors import StudioError
from core.files import append_line, read_json, write_json
from core.nn.checkpoint import flatten_state, load_train_state, save_checkpoint, unflatten_state
from core.nn.infer import evaluate, pick_device
from core.runs.queue import DeviceRequest, StopWaiting, hold, visible_gpus
from core.runs.run import ACTIVE, PruneRequested, Run, RunError, StopFlag, StopRequested, begin, process_start_time
from core.runs.speeds import record_run_speed


EVALS_IN_A_TIME_LIMIT = 25  # a time-limited run evaluates about this often, and at its end


def device_name(device: torch.device) -> str:
    """What the device is, as core.runs.speeds names it: the GPU's model, or CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


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
          gpus: str | None = None, stop: StopFlag | None = None) -> dict:
    """Train (or resume) a run in this process, or in this one of the processes torchrun started;
    returns the final status. Never raises for the run's own failures: they end up in status.json
    as `failed` with the reason. Only rank 0 writes the run folder. `stop`: the process's flag, when
    it set one up before importing this module."""
    stop = stop or StopFlag()
    world = World.from_env()
    record = run.update_status if world.is_main else (lambda **fields: fields)
    trial = None

    def on_wait(message: str) -> None:
        record(state="queued", waiting_for=message)
        print(f"queued: {message}", flush=True)

    try:
        if world.size == 1:
            begin(run, device_request)  # its pid, and a Stop that came before it
        else:  # a Stop signals torchrun's agent, which passes it on to every process
            record(pid=os.getppid(), pid_start=process_start_time(os.getppid()), device_request=device_request)
        record(host=socket.gethostname(), world_size=world.size)
        if world.size == 1 and run.status().get("search"):  # a search's trial: reports each epoch and its end
            from core.search.trial import SearchTrial

            trial = SearchTrial.of(run)
        cfg = run.config()
        if epochs and epochs != cfg.train.epochs:  # resuming with more (or fewer) epochs
            cfg = cfg.replace_train(epochs=epochs)
            if world.is_main:
                write_json(run.config_path, {**cfg.to_dict(), "params": read_json(run.config_path)["params"]})
        if data:
            cfg = RunConfig(cfg.arch, cfg.train, data, cfg.preset, cfg.budget, cfg.allow_over_budget)
        if world.size > 1:  # torchrun started us: our launcher (or the cluster's scheduler) holds the devices
            kind = pick_device(device_request).type
            device = torch.device("cuda", world.local_rank) if kind == "cuda" else torch.device("cpu")
            devices = contextlib.nullcontext()
        else:
            devices = hold(DeviceRequest.parse(device_request, gpus), str(run.dir), stop, on_wait)
        with devices as held:
            if world.size == 1:
                device = pick_device("cpu" if held == ["cpu"] else f"cuda:{visible_gpus().index(held[0])}")
            world.join(device)
            record(state="running", device=str(device), started=time.time(), waiting_for=None, error=None,
                   device_name=device_name(device))
            log(run, world, f"training on {device} with torch {torch.__version__}"
                            + (f", {world.size} processes" if world.size > 1 else ""))
            fit(run, cfg, device, stop, world, trial.report if trial else None)
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
        reason = "out of memory: use a smaller batch size" if isinstance(e, torch.OutOfMemoryError) else \
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
    if trial is not None:
        trial.end(status)
    return status


def fit(run: Run, cfg: RunConfig, device: torch.device, stop: StopFlag, world: World,
        on_epoch: Callable[[int, float], None] | None = None) -> None:
    """Train `run`; `on_epoch(epoch, eval_acc)` is called after each epoch's checkpoint (a search's trial
    reports there, and may raise PruneRequested)."""
    t = cfg.train
    torch.manual_seed(t.seed)

    # data, on the device, as uint8
    dataset = load_dataset(cfg.data)
    train_split, eval_split, eval_name = dataset.train, dataset.test, "test"
    if t.val_fraction > 0:
        train_split, eval_split = split_validation(dataset.train, t.val_fraction, t.seed)
        eval_name = "val"
    images, labels = train_split.images, train_split.labels  # each epoch, this process's shard goes to the device
    n = len(labels)
    batch_size = min(t.batch_size, n)  # the global batch, over all processes
    check(cfg.replace_train(batch_size=batch_size), device.type, world.size)
    local_batch = batch_size // world.size
    steps_per_epoch = n // batch_size  # whole batches only: static shapes, and no tiny last step
    total_steps = t.epochs * steps_per_epoch
    log(run, world, f"data: {dataset.source}; {n:,} training images, {len(eval_split):,} {eval_name} images"
                    + (f"; {local_batch} of each batch of {batch_size} per process" if world.size > 1 else ""))

    trainer = Trainer(cfg, device, world)
    model, optimizer, ema, augment = trainer.model, trainer.optimizer, trainer.ema, trainer.augment

    # resume where `last` left off
    start_epoch, start_step, best_acc, elapsed_before, trained = 0, 0, -1.0, 0.0, 0.0
    if (run.checkpoints / "last.json").exists():
        tensors, plain, meta = load_train_state(run.checkpoints, "last")
        model.load_state_dict(unflatten_state("model", tensors, plain))
        optimizer.load_state_dict(unflatten_state("optimizer", tensors, plain))
        if ema is not None:
            ema.load_state_dict(unflatten_state("ema", tensors, plain))
        start_epoch, start_step = meta["epoch"], meta["step"]
        best_acc, elapsed_before, trained = meta.get("best_acc", -1.0), meta["elapsed"], meta.get("trained", 0.0)
        log(run, world, f"resumed at epoch {start_epoch} step {start_step}")

    def checkpoint_meta(epoch: int, step: int, acc: float | None, elapsed: float) -> dict:
        return {"spec": cfg.arch.to_dict(), "classes": list(dataset.classes), **augment.normalizer.stats,
                "epoch": epoch, "step": step, "eval_acc": acc, "eval_split": eval_name, "best_acc": best_acc,
                "elapsed": elapsed, "trained": trained, "tta_flip": t.tta_flip, "data": dataset.source,
                "saved": time.time()}

    def save(tag: str, epoch: int, step: int, acc: float | None, elapsed: float) -> None:
        if not world.is_main:
            return
        state, plain = {}, {}
        for prefix, sd in [("model", model.state_dict()), ("optimizer", optimizer.state_dict())] + \
                ([("ema", ema.state_dict())] if ema is not None else []):
            ts, ps = flatten_state(prefix, sd)
            state |= ts
            plain |= ps
        eval_model = ema.module if ema is not None else model
        save_checkpoint(run.checkpoints, tag, eval_model.state_dict(), checkpoint_meta(epoch, step, acc, elapsed),
                        train_state=state, train_meta=plain)

    def evaluate_now():
        return evaluate(ema.module if ema is not None else model, eval_split.images, eval_split.labels,
                        augment.normalizer, device, len(dataset.classes), t.tta_flip, t.precision)

    def lr_now(global_step: int, trained_now: float) -> float:
        """The schedule's lr at a step; with a time limit, at the share of the time used instead."""
        if t.time_limit:
            return lr_at(t, min(1.0, trained_now / t.time_limit) * total_steps, total_steps, steps_per_epoch)
        return lr_at(t, global_step, total_steps, steps_per_epoch)

    def so_far() -> tuple[float, float, int]:
        """This epoch's train loss, accuracy and images until now, over all processes."""
        loss, right, images_seen = world.sum(torch.stack([loss_sum, correct.float(),
                                                          torch.tensor(float(seen), device=device)])).tolist()
        return loss / max(images_seen, 1), right / max(images_seen, 1), int(images_seen)

    session_start = time.perf_counter()
    out_of_time, next_eval = False, 0.0
    for epoch in itertools.count(start_epoch) if t.time_limit else range(start_epoch, t.epochs):
        model.train()
        # the epoch's order depends only on (seed, epoch), so a resumed epoch replays it, with any world size;
        # this process holds its slice of each global batch, in step order, on its device
        order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        mine = order[:steps_per_epoch * batch_size].view(steps_per_epoch, world.size, local_batch)[:, world.rank]
        shard_images, shard_labels = images[mine.reshape(-1)].to(device), labels[mine.reshape(-1)].to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, epoch_start = 0, time.perf_counter()
        first = start_step if epoch == start_epoch else 0
        step, lr = first - 1, lr_now(epoch * steps_per_epoch + first, trained)  # for an epoch with no step left
        for step in range(first, steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            # augmentation and dropout, replayable: each process draws its own
            torch.manual_seed((t.seed * 1_000_003 + global_step) * world.size + world.rank)
            x = shard_images[step * local_batch:(step + 1) * local_batch]
            y = shard_labels[step * local_batch:(step + 1) * local_batch]
            trained_now = trained + time.perf_counter() - epoch_start  # host clock: no sync
            lr = lr_now(global_step, trained_now)
            loss, logits = trainer.step(x, y, lr)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if (global_step + 1) % t.log_every == 0:  # the only host sync inside an epoch
                train_loss, _, seen_all = so_far()
                if world.is_main:
                    run_append_metrics(run, {"kind": "step", "epoch": epoch + (step + 1) / steps_per_epoch,
                                             "step": global_step + 1, "train_loss": train_loss, "lr": lr,
                                             "images_per_s": seen_all / (time.perf_counter() - epoch_start),
                                             "elapsed": elapsed_before + time.perf_counter() - session_start})
            if world.any(stop()):  # all processes stop after the same step
                trained += time.perf_counter() - epoch_start
                save("last", epoch, step + 1, None, elapsed_before + time.perf_counter() - session_start)
                raise StopRequested
            if t.time_limit and trained_now >= t.time_limit:
                out_of_time = True
                break

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_loss, train_acc, seen_all = so_far()
        train_time = time.perf_counter() - epoch_start
        trained += train_time
        done_epoch, done_step = (epoch + 1, 0) if step + 1 == steps_per_epoch else (epoch, step + 1)
        epochs_done = done_epoch + done_step / steps_per_epoch if done_step else done_epoch
        if t.time_limit:  # epochs can take a second on a GPU: evaluate and save a few times, not after each
            if trained < next_eval and not out_of_time:
                continue
            next_eval = trained + t.time_limit / EVALS_IN_A_TIME_LIMIT
        result = evaluate_now()  # every process evaluates: no process waits for another
        elapsed = elapsed_before + time.perf_counter() - session_start
        line = {"kind": "epoch", "epoch": epochs_done,
                "step": done_epoch * steps_per_epoch + done_step,
                "train_loss": train_loss, "train_acc": train_acc,
                "eval_split": eval_name, "eval_loss": result.loss, "eval_acc": result.accuracy,
                "lr": lr, "images_per_s": seen_all / train_time, "elapsed": elapsed, "trained": trained}
        if world.is_main:
            run_append_metrics(run, line)
        if world.size == 1:  # a speed of one device, for estimates; no reason to fail a run
            with contextlib.suppress(OSError):
                record_run_speed(str(device), device_name(device), line["images_per_s"], count(cfg.arch).macs,
                                 run.name)
        of = f" ({trained:.0f} of {t.time_limit:g} s)" if t.time_limit else f"/{t.epochs}"
        log(run, world, f"epoch {epochs_done:.4g}{of}: train loss {train_loss:.3f} acc {train_acc:.3f}, "
                        f"{eval_name} loss {result.loss:.3f} acc {result.accuracy:.4f}, "
                        f"{line['images_per_s']:.0f} img/s")
        if result.accuracy > best_acc:
            best_acc = result.accuracy
            save("best", done_epoch, done_step, result.accuracy, elapsed)
        save("last", done_epoch, done_step, result.accuracy, elapsed)
        if world.is_main:
            run.update_status(epoch=epochs_done, best_acc=best_acc)
        if on_epoch is not None:
            on_epoch(done_epoch, result.accuracy)
        if out_of_time:
            break

    final = evaluate_now()
    if not world.is_main:
        return
    write_json(run.results_path, {
        "eval_split": eval_name, "accuracy": final.accuracy, "loss": final.loss, "classes": list(dataset.classes),
        "per_class_accuracy": dict(zip(dataset.classes, final.per_class_accuracy)),
        "confusion": final.confusion.tolist(), "best_acc": best_acc, "data": dataset.source,
        "checkpoint": "last"})


def run_append_metrics(run: Run, line: dict) -> None:
    try:
        append_line(run.metrics_path, line)
    except OSError as e:
        raise RunError(f"cannot write {run.metrics_path} ({e.strerror}); free disk space, then resume") from None
