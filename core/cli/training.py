"""`python -m core` commands for training and runs: train, resume, stop, list, queue, delete; check data, bench
the engine, probe the machine."""
from __future__ import annotations

import argparse
import os
import sys
import time

from core.cli.common import add_source, config_from_args, emit
from core.design.config import RunConfig
from core.design.presets import PRESETS, preset_for_cpu
from core.measure.probe import PROBE_SECONDS
from core.runs.queue import plan, queue
from core.runs.record import read_record
from core.runs.reproduce import finish, reproduce
from core.runs.run import (Run, RunError, StopFlag, change_batch_size, claim, create_run, delete, launch, repair,
                           resume_problem, run_lock, scan_runs, stop)
from core.runs.speeds import REFERENCE
from core.runs.watch import watch, watched_by


def cmd_train(args) -> int:
    # every machine of a run across machines watches its own processes
    watching = not (args.detach or args.create_only or args.watched or "TORCHELASTIC_RUN_ID" in os.environ)
    stop_flag = StopFlag() if args.watched or not (args.detach or watching) else None  # before the slow imports
    if args.device not in ("auto", "cpu", "mps") or args.gpus:  # CUDA by name: a driver torch cannot use says so
        from core.nn.gpu import driver_problem

        if problem := driver_problem():
            raise RunError(problem)
    if args.resume and args.time_limit is not None:
        raise RunError("--time-limit: a resumed run keeps its time limit (the schedule is stretched over it); "
                       "start a new run to train for another time")
    if args.resume:
        run = Run.at(args.resume).intact()
        if args.watched:
            watched_by(run)  # its watcher's death stops it: no run trains unwatched
        elif "TORCHELASTIC_RUN_ID" in os.environ:
            watched_by(run, os.getppid())  # a torchrun worker: its machine's agent's death stops it
        if problem := resume_problem(run):
            raise RunError(f"{problem} (python -m core train --config {run.config_path})")
        if args.batch_size and not args.watched and "TORCHELASTIC_RUN_ID" not in os.environ:
            change_batch_size(run, args.batch_size)  # the config: every process of the session reads it
    else:
        if args.preset:
            args.preset = preset_for_this_machine(args)
        cfg = config_from_args(args)
        overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v}
        if args.time_limit is not None:
            overrides["time_limit"] = args.time_limit
        elif args.epochs and cfg.train.time_limit:  # else the epochs would only reshape a time limit's schedule
            overrides["time_limit"] = 0
            print(f"note: --epochs {args.epochs} trains for {args.epochs} epochs, not for the recipe's time limit "
                  f"({cfg.train.time_limit:g} s); give --time-limit as well to keep a time limit, over which the "
                  f"epochs only set the schedule's shape (the warm-up's share).", file=sys.stderr)
        if overrides:
            cfg = cfg.replace_train(**overrides)
        if args.allow_over_budget:
            cfg = RunConfig.from_dict(cfg.to_dict() | {"allow_over_budget": True})
        if args.data:
            cfg = RunConfig.from_dict(cfg.to_dict() | {"data": args.data})
        name = args.run_dir or f"{cfg.preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = Run.at(name)
        run = create_run(cfg, run.name, run.dir.parent)
    if args.create_only:
        emit({"run": str(run.dir), "state": "queued"})
        return 0
    data, epochs = (args.data, args.epochs) if args.resume else (None, None)
    if watching:  # train in a process of our own and watch it: no run stalls silently, Stop always stops
        if args.node_rank == 0:  # machine 0 keeps the run's status
            with run_lock(run, "launch"):
                claim(run, os.getpid())  # two launches of one run at the same moment: the second is told, not run
        code = watch(run, [sys.executable, "-m", "core", *training_args(run, args, data, epochs), "--watched"],
                     run.config().train.stall_limit, args.node_rank, args.nnodes)
        status = run.status()
        ended(run, status)
        return code or (1 if status.get("state") == "failed" else 0)
    request, processes = plan(args.device, args.gpus, args.nproc_per_node, nnodes=args.nnodes,
                              node_rank=args.node_rank, rdzv=args.rdzv, max_restarts=args.max_restarts)
    if args.detach:
        pid = launch(run, args.device, data, epochs, args.gpus, processes.cli_args() if processes.distributed else [])
        emit({"run": str(run.dir), "pid": pid, "state": "queued", "world_size": processes.world_size})
        return 0
    if processes.distributed:
        from core.engine.distributed import run_processes

        status = run_processes(run, processes, request, data, epochs)
    else:
        from core.engine.loop import train  # torch-heavy: imported only by the commands that train

        status = train(run, args.device, data, epochs, args.gpus, stop_flag, search_trial_hooks(run))
    if not (args.watched or "TORCHELASTIC_RUN_ID" in os.environ):  # else the watcher or torchrun says how it ended
        ended(run, status)
    return 1 if status.get("state") == "failed" else 0


def ended(run: Run, status: dict) -> None:
    """Say how the run ended; a run made by `reproduce` adds how it compares with the one it reproduces."""
    comparison = finish(run) if status.get("state") == "finished" else None
    emit({"run": str(run.dir)} | status | ({"reproduction": comparison} if comparison else {}))


def training_args(run: Run, args, data: str | None, epochs: int | None) -> list[str]:
    """`train` options that resume `run` as this command was asked to train it."""
    out = ["train", "--resume", str(run.dir), "--device", args.device]
    out += (["--data", data] if data else []) + (["--epochs", str(epochs)] if epochs else [])
    out += ["--gpus", args.gpus] if args.gpus else []
    out += [f"--nproc-per-node={args.nproc_per_node}"] if args.nproc_per_node else []
    if args.nnodes > 1:
        out += [f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}", f"--rdzv={args.rdzv}"]
    return out + [f"--max-restarts={args.max_restarts}"]


def cmd_reproduce(args) -> int:
    """A new run with RUN's config and data, trained as `train --resume` trains it; its end compares the two."""
    args.resume = str(reproduce(Run.at(args.run).intact(), args.run_dir).dir)
    args.batch_size = None  # the original's batch, as its config has it
    return cmd_train(args)


def search_trial_hooks(run: Run):
    """A search's trial reports to its study after each epoch and at its end: the hooks that do so, opened
    by the loop (None for a run that is no trial)."""
    if not run.status().get("search"):
        return None
    from core.search.trial import SearchTrial  # Optuna: only for a trial

    return lambda: SearchTrial.of(run)


def cmd_data(args) -> int:
    from core.data.datasets import load_dataset
    from core.data.sources import resolve_data

    start = time.perf_counter()
    dataset = load_dataset(resolve_data(args.data), download=args.download)
    emit({"source": dataset.source, "classes": list(dataset.classes), "train": len(dataset.train),
          "test": len(dataset.test), "train_per_class": dataset.train.labels.bincount().tolist(),
          "test_per_class": dataset.test.labels.bincount().tolist(), "seconds": time.perf_counter() - start})
    return 0


def cmd_bench(args) -> int:
    from core.measure.bench import bench

    cfg = config_from_args(args)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("compile", args.compile or None)) if v}
    if overrides:
        cfg = cfg.replace_train(**overrides)
    if args.data:
        cfg = RunConfig.from_dict(cfg.to_dict() | {"data": args.data})
    emit(bench(cfg, args.device, args.seconds))
    return 0


def cmd_machine(args) -> int:
    from core.measure.probe import probe

    emit(probe(again=args.again, arch_preset=args.preset, seconds=args.seconds))
    return 0


def cmd_runs(args) -> int:
    healthy, damaged = scan_runs()
    emit([run.summary() | {"record": read_record(run.record_path)} for run in healthy] +
         [{"name": run.name, "state": "damaged", "damage": damage.to_dict(),
           "advice": f"python -m core repair {run.dir}" if damage.repair else f"python -m core delete {run.dir} --yes"}
          for run, damage in damaged])
    return 0


def cmd_repair(args) -> int:
    run = Run.at(args.run).require()
    emit({"repaired": str(run.dir), "done": repair(run)})
    return 0


def cmd_queue(args) -> int:
    emit(queue())
    return 0


def cmd_stop(args) -> int:
    emit(stop(Run.at(args.run)))
    return 0


def cmd_delete(args) -> int:
    run = Run.at(args.run)
    if not args.yes:
        print(f"error: deleting {run.dir} removes its checkpoints and metrics; pass --yes to confirm",
              file=sys.stderr)
        return 2
    delete(run)
    emit({"deleted": str(run.dir)})
    return 0


def preset_for_this_machine(args) -> str:
    """--preset, or the variant it names for a CPU that trains it in fp32 where this run trains on such a CPU (the
    switch said on stderr; --as-named keeps the preset)."""
    variant = preset_for_cpu(args.preset, computes_bf16=False)
    if variant == args.preset or args.as_named or args.gpus or args.device not in ("auto", "cpu"):
        return args.preset
    from core.nn.infer import amp_policy, auto_device  # torch: only for a preset with a variant

    arithmetic = amp_policy("cpu", None, RunConfig.from_preset(args.preset).train.precision)
    if arithmetic.dtype is not None or (args.device == "auto" and auto_device()[0] != "cpu"):
        return args.preset
    print(f"note: training {variant}, not {args.preset}: this run trains on the CPU in fp32, since "
          f"{arithmetic.why.removeprefix('auto: ')}. There {args.preset} takes about three times as long an image as "
          f"{variant}, which ends ahead in the same time (docs/PERFORMANCE.md). --as-named trains {args.preset} "
          f"itself.", file=sys.stderr)
    return variant


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a design (or resume a run) and write its run folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a preset name")
    g.add_argument("--config", metavar="RUN.json", help="a run config (arch + train) or a bare spec")
    g.add_argument("--resume", metavar="runs/NAME", help="continue a run from its last checkpoint")
    p.add_argument("--run-dir", metavar="runs/NAME", help="where the run goes (default runs/<preset>-<time>)")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--data", help="CIFAR-10 folder or archive, or 'builtin' (default: $CIFAR10_DATA, ./data, "
                                  "else the built-in slice)")
    p.add_argument("--epochs", type=int, help="override the number of epochs, and train for them rather than for a "
                                              "recipe's time limit (with --resume: the new total)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="override the training time: the schedule stretches over it (0: train for the epochs)")
    p.add_argument("--batch-size", type=int, help="override the batch size (with --resume: the batch from the saved "
                                                  "position on, e.g. a smaller one after running out of memory)")
    p.add_argument("--allow-over-budget", action="store_true", help="train a design over its parameter budget")
    p.add_argument("--as-named", action="store_true",
                   help="train --preset itself where it names a variant for CPUs without native bf16 (laptop: "
                        "laptop-narrow) and this run trains on such a CPU")
    p.add_argument("--detach", action="store_true", help="train in a background process and return at once")
    p.add_argument("--watched", action="store_true", help=argparse.SUPPRESS)  # the process a watcher started
    p.add_argument("--create-only", action="store_true",
                   help="write the run folder and stop there; start it with --resume (e.g. under srun torchrun)")
    g = p.add_argument_group("devices and processes (docs/DISTRIBUTED.md)")
    g.add_argument("--gpus", metavar="N|IDS", help="a GPU count (2) or IDs (0,2; one ID: 2,); one process per GPU")
    g.add_argument("--nproc-per-node", type=int, metavar="N", help="processes on this machine (torchrun; "
                                                                      "default: one per GPU, or 1)")
    g.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines taking part (default 1)")
    g.add_argument("--node-rank", type=int, default=0, metavar="R", help="this machine's number, 0..M-1; "
                                                                         "machine 0 keeps the run's status")
    g.add_argument("--rdzv", metavar="HOST:PORT", help="with --nnodes: torchrun's c10d rendezvous on machine 0")
    g.add_argument("--max-restarts", type=int, default=0, help="restarts after a process fails (default 0)")
    p.set_defaults(func=cmd_train)


def add_commands(sub) -> None:
    add_train_command(sub)
    p = sub.add_parser("reproduce", help="train RUN's config and data again as a new run, then compare the two "
                                         "runs' curves, final accuracy and records")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("--run-dir", required=True, metavar="runs/NEW", help="the new run")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--detach", action="store_true", help="train in a background process and return at once; "
                                                         "runs/NEW/reproduces.json holds the comparison at its end")
    p.set_defaults(func=cmd_reproduce, gpus=None, nproc_per_node=None, nnodes=1, node_rank=0, rdzv=None, watched=False,
                   max_restarts=0, create_only=False, data=None, epochs=None, time_limit=None)

    p = sub.add_parser("data", help="check a CIFAR-10 copy (decode and cache it), or download it")
    p.add_argument("--data", help="folder or archive (default: $CIFAR10_DATA, ./data, else the built-in slice)")
    p.add_argument("--download", action="store_true",
                   help="download torchvision's CIFAR-10 into --data (needs internet)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("bench", help="training images/s of this engine vs a seed-style DataLoader loop")
    add_source(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds for each loop (after warm-up)")
    p.add_argument("--data", help="dataset (default as for train)")
    p.add_argument("--batch-size", type=int, help="override the engine's batch size")
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's model")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("machine", help="find the training devices and time each one (kept for estimates)")
    p.add_argument("--again", action="store_true", help="time every device, also those timed before")
    p.add_argument("--preset", default=REFERENCE, choices=list(PRESETS), help="the design to time")
    p.add_argument("--seconds", type=float, default=PROBE_SECONDS, help="timed seconds per device, after a warm-up")
    p.set_defaults(func=cmd_machine)

    p = sub.add_parser("runs", help="list the runs with their state and best accuracy")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("repair", help="mend a damaged run's files where they can be rebuilt (`runs` says which)")
    p.add_argument("run", metavar="runs/NAME")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("queue", help="this machine's devices, the run holding each, and the runs waiting")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("stop", help="stop a running or queued run (it saves a checkpoint first)")
    p.add_argument("run", metavar="runs/NAME")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("delete", help="delete a finished, failed or stopped run")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("--yes", action="store_true", help="confirm")
    p.set_defaults(func=cmd_delete)
