"""`python -m core ...`: everything the app does, headless. Every command prints JSON on stdout.

A user error (bad spec, missing data, unknown run) prints `error: ...` on stderr and exits 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from core.deploy.fp16 import export
from core.design.budget import BUDGET, count, fit_to_budget
from core.design.config import RunConfig
from core.design.presets import PRESETS
from core.design.spec import load_json_file
from core.errors import StudioError
from core.measure.probe import PROBE_SECONDS
from core.runs.queue import plan
from core.runs.queue import queue
from core.runs.run import Run, StopFlag, create_run, delete, launch, list_runs, stop
from core.runs.speeds import REFERENCE
from core.units import macs_text, margin_text, params_text


def emit(obj) -> None:
    print(json.dumps(obj, indent=2))


def config_from_args(args) -> RunConfig:
    if args.preset:
        return RunConfig.from_preset(args.preset)
    return RunConfig.from_dict(load_json_file(args.config))


def add_source(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--preset", help="a preset name (see `python -m core presets`)")
    g.add_argument("--config", metavar="FILE.json", help="a run config or a bare architecture spec")


def add_checkpoint(p: argparse.ArgumentParser, onnx: bool = False) -> None:
    if onnx:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--run", metavar="runs/NAME")
        g.add_argument("--onnx", metavar="MODEL.onnx", help="a model exported with `export --format onnx` "
                                                            "(runs with onnxruntime alone, no torch)")
    else:
        p.add_argument("--run", required=True, metavar="runs/NAME")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tta-flip", action="store_true", help="average with the mirrored image")


def budget_report(cfg: RunConfig, budget: int) -> dict:
    cost = count(cfg.arch)
    summary = (f"{params_text(cost.params)} parameters ({margin_text(cost.params - budget)}), "
               f"{macs_text(cost.macs)} MACs per image")
    return {"summary": summary, "params": cost.params, "budget": budget, "within_budget": cost.params <= budget,
            "margin": budget - cost.params, "macs": cost.macs,
            "stem": {"params": cost.stem_params, "macs": cost.stem_macs},
            "stages": [{"stage": s.index, "blocks": len(s.blocks), "channels": cfg.arch.stages[s.index].channels,
                        "params": s.params, "macs": s.macs, "out_size": s.out_size,
                        "receptive_field": s.receptive_field} for s in cost.stages],
            "head": {"params": cost.head_params, "macs": cost.head_macs, "features": cost.head_features},
            "spec": cfg.arch.to_dict()}


# ---- commands ----------------------------------------------------------------------------------

def cmd_presets(args) -> int:
    rows = []
    for name, preset in PRESETS.items():
        params = count(RunConfig.from_preset(name).arch).params
        rows.append({"name": name, "params": params, "within_budget": params <= BUDGET,
                     "description": preset["description"], "source": preset["source"]})
    emit(rows)
    return 0


def cmd_params(args) -> int:
    cfg = config_from_args(args)
    report = budget_report(cfg, args.budget)
    if args.fit:
        fit = fit_to_budget(cfg.arch, args.budget, args.multiple_of)
        report["fit"] = {"factor": fit.factor, "params_before": fit.params_before,
                         "params_after": fit.params_after, "changes": fit.changes, "spec": fit.spec.to_dict()}
    emit(report)
    return 0


def cmd_train(args) -> int:
    stop_flag = None if args.detach else StopFlag()  # listening for Stop before the slow imports below
    if args.resume:
        run = Run.at(args.resume).require()
    else:
        cfg = config_from_args(args)
        overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v}
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

        status = train(run, args.device, data, epochs, args.gpus, stop_flag)
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # under torchrun, the launcher says how the run ended
        emit({"run": str(run.dir)} | status)
    return 1 if status.get("state") == "failed" else 0


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


def cmd_predict(args) -> int:
    files = [(f, Path(f)) for f in args.images]
    if args.onnx:  # the device path: onnxruntime, numpy and Pillow, never torch
        from core.deploy.onnx_model import OnnxModel, classify

        predictions = classify(OnnxModel.load(args.onnx), files, tta_flip=args.tta_flip)
    else:
        from core.deploy.predict import Classifier, classify

        classifier = Classifier.load(Run.at(args.run), args.checkpoint, args.device)
        predictions = classify(classifier, files, tta_flip=args.tta_flip)
    emit([p.to_json(args.top) for p in predictions])
    return 0 if all(p.ok for p in predictions) else 1


def cmd_evaluate(args) -> int:
    from core.data.sources import resolve_data
    from core.deploy.predict import Classifier, evaluate_run

    start = time.perf_counter()
    classifier = Classifier.load(Run.at(args.run), args.checkpoint, args.device)
    report = evaluate_run(classifier, resolve_data(args.data), args.mistakes, args.tta_flip)
    emit(report.to_json() | {"checkpoint": args.checkpoint, "seconds": time.perf_counter() - start})
    return 0


def cmd_runs(args) -> int:
    emit([run.summary() for run in list_runs()])
    return 0


def cmd_queue(args) -> int:
    emit(queue())
    return 0


def cmd_stop(args) -> int:
    emit(stop(Run.at(args.run)))
    return 0


def cmd_export(args) -> int:
    if args.format == "onnx":
        from core.deploy.onnx_export import export_onnx

        emit(export_onnx(Run.at(args.run), args.dest, args.checkpoint, args.int8, args.data, args.max_drop,
                         args.calibration_images))
        return 0
    if args.int8:
        print("error: --int8 is for --format onnx; the safetensors export is fp16 (or --fp32)", file=sys.stderr)
        return 2
    dest = export(Run.at(args.run), Run.at(args.dest), half=not args.fp32)
    emit({"exported": str(dest.dir), "files": sorted(str(p.relative_to(dest.dir)) for p in dest.dir.rglob("*")
                                                     if p.is_file())})
    return 0


def cmd_bench_export(args) -> int:
    from core.measure.latency import bench_export

    emit(bench_export(Run.at(args.run).require(), args.checkpoint, args.data, args.seconds))
    return 0


def cmd_import(args) -> int:
    from core.deploy.importer import NORMALIZATIONS, import_weights

    design = RunConfig.from_dict(load_json_file(args.design))
    if args.allow_over_budget:
        design = RunConfig.from_dict(design.to_dict() | {"allow_over_budget": True})
    mean, std = NORMALIZATIONS[args.normalization]
    mean, std = tuple(args.mean or mean), tuple(args.std or std)
    run = import_weights(Path(args.weights), args.weights, design, args.run_dir, mean, std)
    emit({"imported": str(run.dir), "from": args.weights, "params": run.summary()["params"],
          "mean": list(mean), "std": list(std)})
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


def cmd_search(args) -> int:
    from core.search.report import study_status  # Optuna: imported only by the command that searches
    from core.search.space import Space
    from core.search.study import check_study_name, continue_study, search_dir, start_study, storage_url
    from core.search.worker import Worker, detach, request_stop

    if args.status or args.stop:
        emit(study_status(args.status, args.storage) if args.status else request_stop(args.stop, args.storage))
        return 0
    name = args.study or (f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}" if args.space else None)
    if name is None:
        print("error: give --space SPACE.json to start a study, or --study NAME to continue one", file=sys.stderr)
        return 2
    if args.space:
        url = start_study(Space.from_dict(load_json_file(args.space)), name, args.storage, args.trials or 0)
    else:
        url = storage_url(check_study_name(name), args.storage)
    trials = args.trials or study_status(name, url)["trials_target"]
    if not trials:
        print("error: give --trials N: how many trials the study should have", file=sys.stderr)
        return 2
    if args.detach:
        pid = detach(name, url, trials, args.device)
        emit({"study": name, "pid": pid, "log": str(search_dir() / f"{name}.log")})
        return 0
    if not args.detached:
        continue_study(name, url)
    emit(Worker(name, url, trials, args.device).run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="ResNet Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets with their parameter counts")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("params", help="count parameters and MACs of a design, without building it")
    add_source(p)
    p.add_argument("--budget", type=int, default=BUDGET, help="parameter budget (default 5,000,000)")
    p.add_argument("--fit", action="store_true", help="also scale widths to the largest design within budget")
    p.add_argument("--multiple-of", type=int, default=1, help="with --fit: round widths to a multiple of this")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a design (or resume a run) and write its run folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a preset name")
    g.add_argument("--config", metavar="RUN.json", help="a run config (arch + train) or a bare spec")
    g.add_argument("--resume", metavar="runs/NAME", help="continue a run from its last checkpoint")
    p.add_argument("--run-dir", metavar="runs/NAME", help="where the run goes (default runs/<preset>-<time>)")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--data", help="CIFAR-10 folder or archive, or 'builtin' (default: $CIFAR10_DATA, ./data, "
                                  "else the built-in slice)")
    p.add_argument("--epochs", type=int, help="override the number of epochs (with --resume: the new total)")
    p.add_argument("--batch-size", type=int, help="override the batch size")
    p.add_argument("--allow-over-budget", action="store_true", help="train a design over its parameter budget")
    p.add_argument("--detach", action="store_true", help="train in a background process and return at once")
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

    p = sub.add_parser("predict", help="classify image files with a run's checkpoint or an exported ONNX model "
                                       "(JSON per file)")
    add_checkpoint(p, onnx=True)
    p.add_argument("--top", type=int, default=3, help="how many classes to list per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix and worst mistakes")
    add_checkpoint(p)
    p.add_argument("--data", help="a CIFAR-10 copy (its test split) or a folder/.zip/.tar.gz of class folders")
    p.add_argument("--mistakes", type=int, default=20, help="how many of the most confident mistakes to list")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("runs", help="list the runs with their state and best accuracy")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("queue", help="this machine's devices, the run holding each, and the runs waiting")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("stop", help="stop a running or queued run (it saves a checkpoint first)")
    p.add_argument("run", metavar="runs/NAME")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("export", help="a finished run to ship: record + best checkpoint in fp16 (safetensors), "
                                      "or one verified ONNX file for devices (--format onnx)")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("dest", metavar="runs/NEW|OUT.onnx")
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    p.add_argument("--fp32", action="store_true", help="safetensors: keep fp32 weights")
    p.add_argument("--int8", action="store_true", help="onnx: int8 by static quantization, calibrated on training "
                                                       "images")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="onnx: which checkpoint")
    p.add_argument("--data", help="onnx: CIFAR-10 copy to verify on (its test split) and calibrate int8 with (its "
                                  "training split); default the run's own data if it is here, else the built-in slice")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="onnx --int8: refuse if int8 loses more accuracy points than this against fp32 (default 1)")
    p.add_argument("--calibration-images", type=int, default=1024, help="onnx --int8: how many training images")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench-export", help="CPU latency at batch 1 and 256: PyTorch, ONNX fp32, ONNX int8")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--data", help="images to time and calibrate int8 with (default as for export)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per batch size (after warm-up)")
    p.set_defaults(func=cmd_bench_export)

    p = sub.add_parser("import", help="a PyTorch state_dict (.pt) trained elsewhere, as a run of a given design")
    p.add_argument("weights", metavar="WEIGHTS.pt")
    p.add_argument("--design", required=True, metavar="SPEC.json", help="the network's design: a spec or run config")
    p.add_argument("--run-dir", required=True, metavar="runs/NAME", help="the new run")
    p.add_argument("--normalization", choices=("cifar10", "kuangliu", "none"), default="cifar10",
                   help="the input normalisation the weights were trained with: CIFAR-10's mean and std (default), "
                        "kuangliu pytorch-cifar's (std 0.2023, 0.1994, 0.2010), or none (plain [0, 1] pixels)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="or give the mean on [0, 1] pixels")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="and the std")
    p.add_argument("--allow-over-budget", action="store_true", help="import a design over its parameter budget")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("search", help="search designs within the budget with Optuna (each trial is a run)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--space", metavar="SPACE.json", help="the search space (see docs/SEARCH.md); starts the study")
    g.add_argument("--status", metavar="NAME", help="the study's trials, best trial and Pareto front as JSON")
    g.add_argument("--stop", metavar="NAME", help="stop the study's workers and trials (resume by searching again)")
    p.add_argument("--study", metavar="NAME", help="the study to start or continue (default: SPACE-<time>)")
    p.add_argument("--trials", type=int, help="how many trials the study should have (rejected designs not counted)")
    p.add_argument("--storage", metavar="URL", help="an Optuna storage URL, e.g. postgresql+psycopg://USER@HOST/DB "
                                                    "(default: a SQLite file under runs/.search/)")
    p.add_argument("--device", help="device for this machine's trials (default: the space's, auto = every GPU)")
    p.add_argument("--detach", action="store_true", help="search in a background process and return at once")
    p.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)  # the worker that --detach starts
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("delete", help="delete a finished, failed or stopped run")
    p.add_argument("run", metavar="runs/NAME")
    p.add_argument("--yes", action="store_true", help="confirm")
    p.set_defaults(func=cmd_delete)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
